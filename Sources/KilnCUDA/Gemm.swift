import CKilnCUDA
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// Operand precision of a GEMM: BF16 (fp32 accumulate), or FP8 e4m3 with per-row activation scales and
/// per-output-channel weight scales (cuBLASLt `OUTER_VEC_32F`), fast accumulation. Output is BF16 either way.
public enum GemmPrecision: String, CaseIterable, Sendable {
    case bf16, fp8
}

/// Fused epilogue of a GEMM.
public enum GemmEpilogue: String, CaseIterable, Sendable {
    case none, bias, gelu, biasGelu = "bias+gelu"

    var cublasLt: Int32 {
        switch self {
        case .none: return Int32(KC_CUBLASLT_EPILOGUE_DEFAULT)
        case .bias: return Int32(KC_CUBLASLT_EPILOGUE_BIAS)
        case .gelu: return Int32(KC_CUBLASLT_EPILOGUE_GELU)
        case .biasGelu: return Int32(KC_CUBLASLT_EPILOGUE_GELU_BIAS)
        }
    }

    public var hasBias: Bool { self == .bias || self == .biasGelu }
}

/// One GEMM problem: `Y[M, N] = X[M, K] · W[N, K]ᵀ (+ bias[N]) (then GELU)`, row-major, as linear layers need.
public struct GemmKey: Hashable, Sendable, CustomStringConvertible {
    public var m, n, k: Int
    public var precision: GemmPrecision
    public var epilogue: GemmEpilogue

    /// Row strides (elements) of X, W and Y when they are not packed (heads inside a wider row); 0 = packed.
    public var strideX = 0, strideW = 0, strideOut = 0
    /// fp32 output instead of BF16 (attention scores).
    public var outputF32 = false
    /// `Y = X · Wᵀ … + C`: the result added to an existing matrix (a residual), `GemmOperands.accumulator`.
    public var accumulate = false
    /// Bytes every operand pointer is aligned to (cuBLASLt assumes 256 unless told; per-head pointers into a wider
    /// row can be aligned to less, and an algorithm that assumes more computes garbage).
    public var alignment = 256
    /// Independent products in one call (attention's heads), the operands `batchStride…` elements apart.
    public var batch = 1
    public var batchStrideX = 0, batchStrideW = 0, batchStrideOut = 0

    public init(m: Int, n: Int, k: Int, precision: GemmPrecision, epilogue: GemmEpilogue = .none) {
        (self.m, self.n, self.k, self.precision, self.epilogue) = (m, n, k, precision, epilogue)
    }

    var ldX: Int { strideX > 0 ? strideX : k }
    var ldW: Int { strideW > 0 ? strideW : k }
    var ldOut: Int { strideOut > 0 ? strideOut : n }

    /// The text used as the plan cache's key.
    public var description: String {
        var text = "\(precision.rawValue) m\(m) n\(n) k\(k) \(epilogue.rawValue)"
        if strideX > 0 || strideW > 0 || strideOut > 0 { text += " ld \(ldX),\(ldW),\(ldOut)" }
        if outputF32 { text += " f32" }
        if accumulate { text += " +C" }
        if alignment < 256 { text += " align\(alignment)" }
        if batch > 1 { text += " batch \(batch) at \(batchStrideX),\(batchStrideW),\(batchStrideOut)" }
        return text
    }

    public var flops: Double { 2 * Double(m) * Double(n) * Double(k) * Double(batch) }
}

/// A cuBLASLt algorithm choice, serializable (the 64-byte opaque descriptor is stable for one cuBLASLt version).
public struct GemmAlgorithm: Equatable, Sendable {
    public var words: [UInt64]

    init(_ algo: kc_cublasLtMatmulAlgo_t) {
        var a = algo
        words = withUnsafeBytes(of: &a.data) { Array($0.bindMemory(to: UInt64.self)) }
    }

    public init?(hex: String) {
        let parts = hex.split(separator: "-")
        guard parts.count == 8 else { return nil }
        var words: [UInt64] = []
        for p in parts {
            guard let w = UInt64(p, radix: 16) else { return nil }
            words.append(w)
        }
        self.words = words
    }

    public var hex: String { words.map { String($0, radix: 16) }.joined(separator: "-") }

    var raw: kc_cublasLtMatmulAlgo_t {
        var a = kc_cublasLtMatmulAlgo_t()
        withUnsafeMutableBytes(of: &a.data) { buffer in
            for (i, w) in words.enumerated() { buffer.storeBytes(of: w, toByteOffset: i * 8, as: UInt64.self) }
        }
        return a
    }

    /// "algo 66 tile 21 stages 9 splitK 1"-style summary.
    public var summary: String {
        var a = raw
        func attr<T: FixedWidthInteger>(_ id: Int, _ type: T.Type) -> T {
            var v: T = 0
            var written = 0
            _ = kc_lt.cublasLtMatmulAlgoConfigGetAttribute?(&a, Int32(id), &v, MemoryLayout<T>.size, &written)
            return v
        }
        return "algo \(attr(Int(KC_CUBLASLT_ALGO_CONFIG_ID), Int32.self)) tile \(attr(Int(KC_CUBLASLT_ALGO_CONFIG_TILE_ID), UInt32.self)) "
            + "stages \(attr(Int(KC_CUBLASLT_ALGO_CONFIG_STAGES_ID), UInt32.self)) splitK \(attr(Int(KC_CUBLASLT_ALGO_CONFIG_SPLITK_NUM), Int32.self))"
    }
}

/// A cuBLASLt handle with its workspace.
public final class CuBLASLt: @unchecked Sendable {
    public let handle: cublasLtHandle_t
    public let version: Int
    public let path: String
    public let workspace: DeviceBuffer
    public static let workspaceBytes = 64 << 20

    public init() throws {
        path = try CUDALibrary.cublasLt.load()
        var h: cublasLtHandle_t?
        try checkLt(kc_lt.cublasLtCreate!(&h), "cublasLtCreate")
        handle = h!
        version = Int(kc_lt.cublasLtGetVersion!())
        workspace = try DeviceBuffer(bytes: CuBLASLt.workspaceBytes)
    }

    deinit { _ = kc_lt.cublasLtDestroy?(handle) }

    /// "13.1.0"-style version text.
    public var versionText: String { "\(version / 10000).\((version / 100) % 100).\(version % 100)" }
}

/// Device pointers of one GEMM call.
public struct GemmOperands {
    public var x: CUdeviceptr
    public var w: CUdeviceptr
    public var out: CUdeviceptr
    public var bias: CUdeviceptr?
    /// FP8: per-row scales of X ([M] fp32) and per-output-channel scales of W ([N] fp32).
    public var xScale: CUdeviceptr?
    public var wScale: CUdeviceptr?
    /// C of an accumulating GEMM (laid out like the output).
    public var accumulator: CUdeviceptr?

    public init(x: CUdeviceptr, w: CUdeviceptr, out: CUdeviceptr, bias: CUdeviceptr? = nil,
                xScale: CUdeviceptr? = nil, wScale: CUdeviceptr? = nil) {
        (self.x, self.w, self.out, self.bias, self.xScale, self.wScale) = (x, w, out, bias, xScale, wScale)
    }
}

/// A GEMM ready to run: descriptors for one `GemmKey` and the chosen algorithm.
///
/// Layout: cuBLASLt is column-major, so the row-major `Y = X Wᵀ` is computed as `Yᵀ (N x M) = op(W) · Xᵀ` with
/// A = W (K x N column-major, transposed: "T"), B = X (K x M, "N"), D = Yᵀ with leading dimension N: the TN layout
/// FP8 requires. A's outer-vector scales run along N (weights per output channel), B's along M (activations per row).
public final class GemmPlan: @unchecked Sendable {
    public let key: GemmKey
    let lt: CuBLASLt
    let desc: cublasLtMatmulDesc_t
    let layoutA: cublasLtMatrixLayout_t
    let layoutB: cublasLtMatrixLayout_t
    let layoutD: cublasLtMatrixLayout_t
    public var algorithm: GemmAlgorithm?
    /// How the algorithm was chosen ("heuristic", "autotuned", "cache").
    public var source = "heuristic"

    public init(_ lt: CuBLASLt, _ key: GemmKey) throws {
        self.lt = lt
        self.key = key
        var d: cublasLtMatmulDesc_t?
        try checkLt(kc_lt.cublasLtMatmulDescCreate!(&d, Int32(KC_CUBLAS_COMPUTE_32F), Int32(KC_CUDA_R_32F)), "cublasLtMatmulDescCreate")
        let desc = d!
        self.desc = desc
        func set<T>(_ attribute: Int, _ value: T) throws {
            var v = value
            try checkLt(kc_lt.cublasLtMatmulDescSetAttribute!(desc, Int32(attribute), &v, MemoryLayout<T>.size),
                        "cublasLtMatmulDescSetAttribute(\(attribute))")
        }
        try set(Int(KC_CUBLASLT_MATMUL_DESC_TRANSA), Int32(KC_CUBLAS_OP_T))
        try set(Int(KC_CUBLASLT_MATMUL_DESC_TRANSB), Int32(KC_CUBLAS_OP_N))
        try set(Int(KC_CUBLASLT_MATMUL_DESC_EPILOGUE), UInt32(key.epilogue.cublasLt))
        let inputType: Int32
        switch key.precision {
        case .bf16:
            inputType = Int32(KC_CUDA_R_16BF)
        case .fp8:
            inputType = Int32(KC_CUDA_R_8F_E4M3)
            try set(Int(KC_CUBLASLT_MATMUL_DESC_FAST_ACCUM), Int8(1))
            try set(Int(KC_CUBLASLT_MATMUL_DESC_A_SCALE_MODE), Int32(KC_CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F))
            try set(Int(KC_CUBLASLT_MATMUL_DESC_B_SCALE_MODE), Int32(KC_CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F))
            // Vector scale modes need scale pointers already for the heuristic query: placeholders until `run` sets
            // the real ones.
            try set(Int(KC_CUBLASLT_MATMUL_DESC_A_SCALE_POINTER), UInt64(lt.workspace.pointer))
            try set(Int(KC_CUBLASLT_MATMUL_DESC_B_SCALE_POINTER), UInt64(lt.workspace.pointer))
        }
        if key.epilogue.hasBias { try set(Int(KC_CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE), Int32(KC_CUDA_R_16BF)) }
        layoutA = try GemmPlan.layout(inputType, key.k, key.n, key.ldW, batch: key.batch, stride: key.batchStrideW)
        layoutB = try GemmPlan.layout(inputType, key.k, key.m, key.ldX, batch: key.batch, stride: key.batchStrideX)
        layoutD = try GemmPlan.layout(key.outputF32 ? Int32(KC_CUDA_R_32F) : Int32(KC_CUDA_R_16BF), key.n, key.m, key.ldOut,
                                      batch: key.batch, stride: key.batchStrideOut)
    }

    static func layout(_ type: Int32, _ rows: Int, _ cols: Int, _ ld: Int, batch: Int, stride: Int) throws -> cublasLtMatrixLayout_t {
        var l: cublasLtMatrixLayout_t?
        try checkLt(kc_lt.cublasLtMatrixLayoutCreate!(&l, type, UInt64(rows), UInt64(cols), Int64(ld)), "cublasLtMatrixLayoutCreate")
        if batch > 1 {
            var count = Int32(batch), offset = Int64(stride)
            try checkLt(kc_lt.cublasLtMatrixLayoutSetAttribute!(l, Int32(KC_CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT), &count, 4),
                        "cublasLtMatrixLayoutSetAttribute(batch count)")
            try checkLt(kc_lt.cublasLtMatrixLayoutSetAttribute!(l, Int32(KC_CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET), &offset, 8),
                        "cublasLtMatrixLayoutSetAttribute(batch offset)")
        }
        return l!
    }

    deinit {
        _ = kc_lt.cublasLtMatrixLayoutDestroy?(layoutA)
        _ = kc_lt.cublasLtMatrixLayoutDestroy?(layoutB)
        _ = kc_lt.cublasLtMatrixLayoutDestroy?(layoutD)
        _ = kc_lt.cublasLtMatmulDescDestroy?(desc)
    }

    /// Up to `count` algorithms cuBLASLt's heuristic proposes, best first.
    public func candidates(_ count: Int) throws -> [GemmAlgorithm] {
        var pref: cublasLtMatmulPreference_t?
        try checkLt(kc_lt.cublasLtMatmulPreferenceCreate!(&pref), "cublasLtMatmulPreferenceCreate")
        defer { _ = kc_lt.cublasLtMatmulPreferenceDestroy!(pref) }
        var bytes = UInt64(CuBLASLt.workspaceBytes)
        try checkLt(kc_lt.cublasLtMatmulPreferenceSetAttribute!(pref, Int32(KC_CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES), &bytes, 8),
                    "cublasLtMatmulPreferenceSetAttribute")
        if key.alignment < 256 {
            var alignment = UInt32(key.alignment)
            for attribute in [KC_CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, KC_CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                              KC_CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, KC_CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES] {
                try checkLt(kc_lt.cublasLtMatmulPreferenceSetAttribute!(pref, Int32(attribute), &alignment, 4),
                            "cublasLtMatmulPreferenceSetAttribute(min alignment)")
            }
        }
        var results = [kc_cublasLtMatmulHeuristicResult_t](repeating: kc_cublasLtMatmulHeuristicResult_t(), count: count)
        var returned: Int32 = 0
        try checkLt(kc_lt.cublasLtMatmulAlgoGetHeuristic!(lt.handle, desc, layoutA, layoutB, layoutD, layoutD, pref,
                                                          Int32(count), &results, &returned),
                    "cublasLtMatmulAlgoGetHeuristic(\(key))")
        guard returned > 0 else { throw CUDAError(call: "cublasLtMatmulAlgoGetHeuristic(\(key))", status: 15, text: "no algorithm") }
        return results[0..<Int(returned)].filter { $0.state == 0 }.map { GemmAlgorithm($0.algo) }
    }

    /// Every configuration cuBLASLt accepts for this problem, beyond the heuristic's list: each algorithm id for
    /// the data types, times each tile and stage count it supports (cluster shape and swizzle left automatic),
    /// filtered by `cublasLtMatmulAlgoCheck` and the workspace limit. At most `limit`.
    public func enumerateAll(limit: Int = 4000) throws -> [GemmAlgorithm] {
        let input = key.precision == .fp8 ? Int32(KC_CUDA_R_8F_E4M3) : Int32(KC_CUDA_R_16BF)
        let output = key.outputF32 ? Int32(KC_CUDA_R_32F) : Int32(KC_CUDA_R_16BF)
        let compute = Int32(KC_CUBLAS_COMPUTE_32F), scale = Int32(KC_CUDA_R_32F)
        var ids = [Int32](repeating: 0, count: 256)
        var count: Int32 = 0
        try checkLt(kc_lt.cublasLtMatmulAlgoGetIds!(lt.handle, compute, scale, input, input, output, output, Int32(ids.count), &ids, &count),
                    "cublasLtMatmulAlgoGetIds")
        var found: [GemmAlgorithm] = []
        for id in ids.prefix(Int(count)) {
            var base = kc_cublasLtMatmulAlgo_t()
            guard kc_lt.cublasLtMatmulAlgoInit!(lt.handle, compute, scale, input, input, output, output, id, &base) == 0 else { continue }
            func capList(_ attribute: Int32) -> [UInt32] {
                var written = 0
                guard kc_lt.cublasLtMatmulAlgoCapGetAttribute!(&base, attribute, nil, 0, &written) == 0, written > 0 else { return [] }
                var values = [UInt32](repeating: 0, count: written / 4)
                _ = kc_lt.cublasLtMatmulAlgoCapGetAttribute!(&base, attribute, &values, written, &written)
                return values
            }
            var tiles = capList(Int32(KC_CUBLASLT_ALGO_CAP_TILE_IDS))
            var stages = capList(Int32(KC_CUBLASLT_ALGO_CAP_STAGES_IDS))
            if tiles.isEmpty { tiles = [0] }
            if stages.isEmpty { stages = [0] }
            for tile in tiles {
                for stage in stages {
                    var algo = base
                    var t = tile, st = stage
                    _ = kc_lt.cublasLtMatmulAlgoConfigSetAttribute!(&algo, Int32(KC_CUBLASLT_ALGO_CONFIG_TILE_ID), &t, 4)
                    _ = kc_lt.cublasLtMatmulAlgoConfigSetAttribute!(&algo, Int32(KC_CUBLASLT_ALGO_CONFIG_STAGES_ID), &st, 4)
                    var result = kc_cublasLtMatmulHeuristicResult_t()
                    guard kc_lt.cublasLtMatmulAlgoCheck!(lt.handle, desc, layoutA, layoutB, layoutD, layoutD, &algo, &result) == 0,
                          result.workspaceSize <= CuBLASLt.workspaceBytes else { continue }
                    found.append(GemmAlgorithm(algo))
                    if found.count >= limit { return found }
                }
            }
        }
        return found
    }

    /// Enqueues the GEMM on `stream` with `algorithm` (default: the plan's, else the heuristic's first) and `workspace`
    /// (`CuBLASLt.workspaceBytes` of scratch; default: the handle's, which GEMMs running at once on two streams must not share).
    public func run(_ operands: GemmOperands, stream: CUDAStream, workspace: DeviceBuffer? = nil, algorithm override: GemmAlgorithm? = nil) throws {
        if algorithm == nil && override == nil { algorithm = try candidates(1).first }
        func setPointer(_ attribute: Int, _ pointer: CUdeviceptr) throws {
            var p = pointer
            try checkLt(kc_lt.cublasLtMatmulDescSetAttribute!(desc, Int32(attribute), &p, 8), "cublasLtMatmulDescSetAttribute(\(attribute))")
        }
        if key.epilogue.hasBias {
            guard let bias = operands.bias else { throw KilnError.invalidArgument("GEMM \(key) needs a bias") }
            try setPointer(Int(KC_CUBLASLT_MATMUL_DESC_BIAS_POINTER), bias)
        }
        if key.precision == .fp8 {
            guard let xs = operands.xScale, let ws = operands.wScale else { throw KilnError.invalidArgument("FP8 GEMM \(key) needs scales") }
            try setPointer(Int(KC_CUBLASLT_MATMUL_DESC_A_SCALE_POINTER), ws)
            try setPointer(Int(KC_CUBLASLT_MATMUL_DESC_B_SCALE_POINTER), xs)
        }
        if key.accumulate && operands.accumulator == nil { throw KilnError.invalidArgument("GEMM \(key) needs C") }
        var algo = (override ?? algorithm)!.raw
        var alpha: Float = 1, beta: Float = key.accumulate ? 1 : 0
        try checkLt(kc_lt.cublasLtMatmul!(lt.handle, desc, &alpha, UnsafeRawPointer(bitPattern: UInt(operands.w)), layoutA,
                                          UnsafeRawPointer(bitPattern: UInt(operands.x)), layoutB, &beta,
                                          UnsafeRawPointer(bitPattern: UInt(operands.accumulator ?? operands.out)), layoutD,
                                          UnsafeMutableRawPointer(bitPattern: UInt(operands.out)), layoutD, &algo,
                                          UnsafeMutableRawPointer(bitPattern: UInt((workspace ?? lt.workspace).pointer)), CuBLASLt.workspaceBytes,
                                          stream.handle),
                    "cublasLtMatmul(\(key))")
    }

    /// Median milliseconds of one call with `algorithm`, timed with events over `batches` batches of `repeats` calls.
    public func time(_ operands: GemmOperands, stream: CUDAStream, algorithm: GemmAlgorithm?,
                     warmup: Int = 3, repeats: Int = 10, batches: Int = 5) throws -> Double {
        for _ in 0..<warmup { try run(operands, stream: stream, algorithm: algorithm) }
        let start = try CUDAEvent(), end = try CUDAEvent()
        var times: [Double] = []
        for _ in 0..<batches {
            try start.record(stream)
            for _ in 0..<repeats { try run(operands, stream: stream, algorithm: algorithm) }
            try end.record(stream)
            try end.synchronize()
            times.append(Double(try end.milliseconds(since: start)) / Double(repeats))
        }
        return median(times)
    }
}

/// Autotuning's timing: each candidate run once (those that fail are dropped), then `rounds` passes of `measure` over
/// the rest, every other pass in reverse order so that clock and power drift during tuning hits all alike; the
/// candidates that ran, with their median milliseconds, fastest first.
public func roundRobinTrials<Candidate>(_ candidates: [Candidate], rounds: Int, stream: CUDAStream, run: (Candidate) throws -> Void,
                                        measure: (Candidate) throws -> Double) -> [(candidate: Candidate, milliseconds: Double)] {
    let usable = candidates.filter { (try? run($0)) != nil && (try? stream.synchronize()) != nil }
    var samples = [[Double]](repeating: [], count: usable.count)
    for round in 0..<rounds {
        for i in round % 2 == 0 ? Array(usable.indices) : usable.indices.reversed() {
            if let ms = try? measure(usable[i]), ms.isFinite { samples[i].append(ms) }
        }
    }
    return zip(usable, samples).compactMap { c, s in s.isEmpty ? nil : (c, median(s)) }.sorted { $0.milliseconds < $1.milliseconds }
}

public func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return .nan }
    let s = values.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// cuBLASLt algorithm choices per GEMM key (`TuningChoices` in `<cache>/gemm/`).
public final class GemmPlanCache: TuningChoices, @unchecked Sendable {
    public init(path: String, gpu: String, cublasLtVersion: Int) {
        super.init(path: path, gpu: gpu, library: "cublasLt", version: cublasLtVersion, field: "plans")
    }

    /// The default location: `<cache>/gemm/<gpu tag>-cublasLt<version>.json`.
    public static func defaultPath(gpuTag: String, cublasLtVersion: Int) -> String {
        defaultPath(folder: "gemm", gpuTag: gpuTag, library: "cublasLt", version: cublasLtVersion)
    }

    public subscript(key: GemmKey) -> GemmAlgorithm? {
        get { self[key.description].flatMap(GemmAlgorithm.init(hex:)) }
        set { self[key.description] = newValue?.hex }
    }
}

/// Chooses algorithms: the cached choice when there is one, else times the heuristic's top candidates once and keeps
/// the fastest.
public final class GemmTuner: @unchecked Sendable {
    public let lt: CuBLASLt
    public let cache: GemmPlanCache
    public var candidateCount = 8
    /// Also search every configuration cuBLASLt accepts (screened with a short timing, the best 8 re-timed), not only
    /// the heuristic's top candidates: `KILN_GEMM_TUNE=exhaustive` (and the selftest). About a second per shape, which
    /// a first image pays for every shape of its resolution, so it is not the default; choices are cached per GPU.
    public var exhaustive = FileIO.environment("KILN_GEMM_TUNE") == "exhaustive"

    public init(lt: CuBLASLt, cache: GemmPlanCache) {
        self.lt = lt
        self.cache = cache
    }

    public struct Trial: Sendable {
        public let algorithm: GemmAlgorithm
        public let milliseconds: Double
    }

    /// Times each of `algorithms` (failures skipped), fastest first. Candidates are timed round-robin (`rounds`
    /// passes of `repeats` calls each, every other pass in reverse order) and each keeps its median, so clock and
    /// power drift during tuning hits all candidates alike.
    public func trials(_ plan: GemmPlan, _ operands: GemmOperands, stream: CUDAStream, algorithms: [GemmAlgorithm],
                       repeats: Int = 10, rounds: Int = 7) -> [Trial] {
        roundRobinTrials(algorithms, rounds: rounds, stream: stream, run: { try plan.run(operands, stream: stream, algorithm: $0) },
                         measure: { try plan.time(operands, stream: stream, algorithm: $0, warmup: 1, repeats: repeats, batches: 1) })
            .map { Trial(algorithm: $0.candidate, milliseconds: $0.milliseconds) }
    }

    /// How many screened configurations go on to the full timing.
    public var finalists = 16

    /// `first` and every configuration cuBLASLt accepts for the plan, each timed briefly in two passes of opposite
    /// order (a sustained search lowers the clocks, which would penalize whichever came last); fastest first.
    public func screen(_ plan: GemmPlan, _ operands: GemmOperands, stream: CUDAStream, first: [GemmAlgorithm]) throws -> [Trial] {
        var candidates = first
        for e in try plan.enumerateAll() where !candidates.contains(e) { candidates.append(e) }
        return trials(plan, operands, stream: stream, algorithms: candidates, repeats: 3, rounds: 2)
    }

    /// Sets `plan.algorithm` from the cache, or by timing; saves new choices.
    @discardableResult
    public func tune(_ plan: GemmPlan, _ operands: GemmOperands, stream: CUDAStream, force: Bool = false) throws -> [Trial] {
        if !force, let cached = cache[plan.key] {
            plan.algorithm = cached
            plan.source = "cache"
            return []
        }
        var candidates: [GemmAlgorithm]
        do {
            candidates = try plan.candidates(candidateCount)
        } catch let error as CUDAError where error.status == 15 && plan.key.alignment >= 256 {
            // The heuristic proposes nothing for a few FP8 shapes (FLUX.1-schnell's 256 text tokens into MLP-out): then
            // every configuration cuBLASLt accepts is tried (checked against layouts only, so only for aligned operands).
            candidates = try plan.enumerateAll(limit: 64)
            guard !candidates.isEmpty else { throw error }
        }
        // Configurations outside the heuristic's list are checked against layouts only, not pointer alignment.
        if exhaustive && plan.key.alignment >= 256 {
            candidates = try screen(plan, operands, stream: stream, first: candidates).prefix(finalists).map(\.algorithm)
        }
        var found = trials(plan, operands, stream: stream, algorithms: candidates)
        guard !found.isEmpty else { throw CUDAError(call: "autotune(\(plan.key))", status: 15, text: "no candidate ran") }
        // The close finishers again, each measurement from an idle GPU: under sustained load the clocks sag and
        // the order of candidates within a few percent is noise.
        if found.count > 1 && found[1].milliseconds < found[0].milliseconds * 1.05 {
            let finalists = Array(found.prefix(3))
            var samples = [[Double]](repeating: [], count: finalists.count)
            for _ in 0..<3 {
                for (i, f) in finalists.enumerated() {
                    try stream.synchronize()
                    usleep(100_000)
                    samples[i].append(try plan.time(operands, stream: stream, algorithm: f.algorithm, warmup: 3, repeats: 20, batches: 3))
                }
            }
            let confirmed = zip(finalists, samples).map { Trial(algorithm: $0.algorithm, milliseconds: median($1)) }
                .sorted { $0.milliseconds < $1.milliseconds }
            found = confirmed + found.dropFirst(finalists.count)
        }
        let best = found[0]
        plan.algorithm = best.algorithm
        plan.source = "autotuned"
        cache[plan.key] = best.algorithm
        try? cache.save()
        return found
    }
}
