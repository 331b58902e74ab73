import CKilnCUDA
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// cuDNN through its backend (graph) API: fused flash attention (the unified SDPA_FWD operation in BF16, the FP8
/// composite graph) over the op interface's `[B, L, H·D]` layout, and NHWC convolutions; one execution plan per shape,
/// built on first use.
public final class CuDNN: @unchecked Sendable {
    public let handle: cudnnHandle_t
    public let version: Int
    public let path: String
    /// The stream cuDNN enqueues on.
    public private(set) var stream: CUDAStream

    struct Shape: Hashable { var batch, heads, queries, keys, dim: Int }

    public final class Plan {
        let raw: OpaquePointer
        public let workspaceBytes: Int
        public let configCount: Int
        public let engine: String
        init(raw: OpaquePointer, workspaceBytes: Int, configCount: Int, engine: String) {
            (self.raw, self.workspaceBytes, self.configCount, self.engine) = (raw, workspaceBytes, configCount, engine)
        }
        deinit { kc_sdpa_destroy(raw) }
    }

    /// Plans by shape, each built at most once: a shape cuDNN has no engine for keeps its reason.
    struct PlanCache<Key: Hashable> {
        var plans: [Key: Plan] = [:]
        var failures: [Key: String] = [:]

        mutating func plan(_ key: Key, build: () -> (plan: Plan?, failure: String?)) -> Plan? {
            if let p = plans[key] { return p }
            if failures[key] != nil { return nil }
            let (plan, failure) = build()
            plans[key] = plan
            failures[key] = failure
            return plan
        }
    }

    private var attention = PlanCache<Shape>()
    private var fp8Attention = PlanCache<Shape>()

    public init(stream: CUDAStream) throws {
        path = try CUDALibrary.cudnn.load()
        version = Int(kc_dnn.cudnnGetVersion!())
        var h: cudnnHandle_t?
        let status = kc_dnn.cudnnCreate!(&h)
        guard status == 0, let h else { throw CuDNN.error(status, "cudnnCreate") }
        handle = h
        self.stream = stream
        try use(stream)
    }

    /// Makes later cuDNN calls enqueue on `stream`.
    public func use(_ stream: CUDAStream) throws {
        let s = kc_dnn.cudnnSetStream!(handle, stream.handle)
        guard s == 0 else { throw CuDNN.error(s, "cudnnSetStream") }
        self.stream = stream
    }

    deinit { _ = kc_dnn.cudnnDestroy?(handle) }

    static func error(_ status: Int32, _ call: String) -> CUDAError {
        let name = kc_dnn.cudnnGetErrorString?(status).map { String(cString: $0) } ?? "cuDNN error"
        return CUDAError(call: call, status: status, text: name)
    }

    /// "9.19.0"-style version text.
    public var versionText: String { "\(version / 10000).\((version / 100) % 100).\(version % 100)" }

    /// The plan for a shape, or nil (with the reason remembered) when cuDNN offers no engine for it.
    public func plan(batch: Int, heads: Int, queries: Int, keys: Int, dim: Int) -> Plan? {
        attention.plan(Shape(batch: batch, heads: heads, queries: queries, keys: keys, dim: dim)) {
            CuDNN.build { raw, workspace, count, info, infoSize, message, messageSize in
                kc_sdpa_create(handle, Int64(batch), Int64(heads), Int64(queries), Int64(keys), Int64(dim), 0, raw,
                               workspace, count, info, infoSize, message, messageSize)
            }
        }
    }

    /// The FP8 attention plan for a shape, or nil (reason in `fp8AttentionFailure`) when cuDNN has no FP8 engine for it.
    public func fp8AttentionPlan(batch: Int, heads: Int, queries: Int, keys: Int, dim: Int) -> Plan? {
        fp8Attention.plan(Shape(batch: batch, heads: heads, queries: queries, keys: keys, dim: dim)) {
            CuDNN.build { raw, workspace, count, info, infoSize, message, messageSize in
                kc_sdpa_fp8_create(handle, Int64(batch), Int64(heads), Int64(queries), Int64(keys), Int64(dim), 0, raw,
                                   workspace, count, info, infoSize, message, messageSize)
            }
        }
    }

    public func fp8AttentionFailure(batch: Int, heads: Int, queries: Int, keys: Int, dim: Int) -> String? {
        fp8Attention.failures[Shape(batch: batch, heads: heads, queries: queries, keys: keys, dim: dim)]
    }

    /// Runs one of sdpa.c's plan builders with its output buffers: the plan, or cuDNN's reason for having none.
    private static func build(_ create: (UnsafeMutablePointer<OpaquePointer?>, UnsafeMutablePointer<Int64>, UnsafeMutablePointer<Int32>,
                                         UnsafeMutablePointer<CChar>, Int, UnsafeMutablePointer<CChar>, Int) -> Int32)
        -> (plan: Plan?, failure: String?) {
        var raw: OpaquePointer?
        var workspace: Int64 = 0
        var count: Int32 = 0
        var info = [CChar](repeating: 0, count: 2048)
        var message = [CChar](repeating: 0, count: 1024)
        let status = info.withUnsafeMutableBufferPointer { i in
            message.withUnsafeMutableBufferPointer { m in create(&raw, &workspace, &count, i.baseAddress!, i.count, m.baseAddress!, m.count) }
        }
        guard status == 0, let raw else { return (nil, String(cString: message)) }
        return (Plan(raw: raw, workspaceBytes: Int(workspace), configCount: Int(count), engine: String(cString: info)), nil)
    }

    struct ConvShape: Hashable, CustomStringConvertible {
        var n, c, h, w, k, r, s, stride, top, left, bottom, right: Int
        var bias, residual: Bool
        var description: String {
            "\(n)x\(h)x\(w)x\(c)->\(k) \(r)x\(s)/\(stride) pad \(top),\(left),\(bottom),\(right)\(bias ? " bias" : "")\(residual ? " residual" : "")"
        }
    }
    private var convolution = PlanCache<ConvShape>()
    /// Which engine config each convolution shape runs (an index into cuDNN's heuristic list), kept on disk.
    public var convolutionChoices: ConvolutionChoices?
    /// How many of the heuristic's engine configs a first use times.
    public var convolutionCandidates = 6

    /// The plan for an NHWC convolution, its bias and a residual added in the same kernel where asked, or nil (reason in
    /// `convolutionFailures`) when cuDNN has no engine for it. A shape seen for the first time runs the config its disk
    /// cache names, else `tune` picks one of the heuristic's first configs (given their plans, it returns an index:
    /// the caller times them on its real operands), else the heuristic's first.
    public func convolutionPlan(batch: Int, channels: Int, height: Int, width: Int, outChannels: Int, kh: Int, kw: Int,
                                stride: Int, padding: (top: Int, left: Int, bottom: Int, right: Int),
                                outHeight: Int, outWidth: Int, bias: Bool, residual: Bool,
                                tune: (([Plan]) throws -> Int)? = nil) -> Plan? {
        let shape = ConvShape(n: batch, c: channels, h: height, w: width, k: outChannels, r: kh, s: kw, stride: stride,
                              top: padding.top, left: padding.left, bottom: padding.bottom, right: padding.right,
                              bias: bias, residual: residual)
        func build(_ config: Int) -> (plan: Plan?, failure: String?) {
            CuDNN.build { raw, workspace, count, info, infoSize, message, messageSize in
                kc_conv_create(handle, Int64(batch), Int64(channels), Int64(height), Int64(width), Int64(outChannels),
                               Int64(kh), Int64(kw), Int64(stride), Int64(padding.top), Int64(padding.left),
                               Int64(padding.bottom), Int64(padding.right), Int64(outHeight), Int64(outWidth),
                               bias ? 1 : 0, residual ? 1 : 0, Int32(config), raw,
                               workspace, count, info, infoSize, message, messageSize)
            }
        }
        return convolution.plan(shape) {
            if let chosen = convolutionChoices?[config: shape.description], case let built = build(chosen), built.plan != nil { return built }
            let first = build(0)
            guard let plan = first.plan, let tune, plan.configCount > 1 else { return first }
            // Some engines compile at plan build (NVRTC), so candidates stop coming after half a second of building.
            let started = MonotonicClock.now()
            var candidates = [(config: 0, plan: plan)]
            for i in 1..<min(plan.configCount, convolutionCandidates) where MonotonicClock.now() - started < 0.5 {
                if let p = build(i).plan { candidates.append((i, p)) }
            }
            guard let best = try? tune(candidates.map(\.plan)), candidates.indices.contains(best) else { return first }
            convolutionChoices?[config: shape.description] = candidates[best].config
            try? convolutionChoices?.save()
            return (candidates[best].plan, nil)
        }
    }

    public var convolutionFailures: [String] { convolution.failures.values.sorted() }

    /// `bias` and `residual` are read where the plan was built with them (0 otherwise).
    public func runConvolution(_ plan: Plan, x: CUdeviceptr, w: CUdeviceptr, y: CUdeviceptr, bias: CUdeviceptr,
                               residual: CUdeviceptr, workspace: CUdeviceptr) throws {
        var message = [CChar](repeating: 0, count: 1024)
        let status = kc_conv_execute(handle, plan.raw, x, w, y, bias, residual, workspace, &message, message.count)
        guard status == 0 else { throw CUDAError(call: "cuDNN convolution", status: status, text: String(cString: message)) }
    }

    public func failure(batch: Int, heads: Int, queries: Int, keys: Int, dim: Int) -> String? {
        attention.failures[Shape(batch: batch, heads: heads, queries: queries, keys: keys, dim: dim)]
    }

    public func run(_ plan: Plan, q: CUdeviceptr, k: CUdeviceptr, v: CUdeviceptr, out: CUdeviceptr, scale: Float,
                    workspace: CUdeviceptr) throws {
        var message = [CChar](repeating: 0, count: 1024)
        let status = kc_sdpa_execute(handle, plan.raw, q, k, v, out, scale, workspace, &message, message.count)
        guard status == 0 else { throw CUDAError(call: "cuDNN SDPA", status: status, text: String(cString: message)) }
    }

    /// Enqueues FP8 attention: every scale a device fp32 scalar (see kc_sdpa_fp8_execute); `amaxS` and `amaxO` receive
    /// max |P| and max |O|.
    public func runFP8Attention(_ plan: Plan, q: CUdeviceptr, k: CUdeviceptr, v: CUdeviceptr, out: CUdeviceptr,
                                descaleQ: CUdeviceptr, descaleK: CUdeviceptr, descaleV: CUdeviceptr, descaleS: CUdeviceptr,
                                scaleS: CUdeviceptr, scaleO: CUdeviceptr, amaxS: CUdeviceptr, amaxO: CUdeviceptr,
                                scale: Float, workspace: CUdeviceptr) throws {
        var message = [CChar](repeating: 0, count: 1024)
        let status = kc_sdpa_fp8_execute(handle, plan.raw, q, k, v, out, descaleQ, descaleK, descaleV, descaleS, scaleS, scaleO,
                                         amaxS, amaxO, scale, workspace, &message, message.count)
        guard status == 0 else { throw CUDAError(call: "cuDNN FP8 SDPA", status: status, text: String(cString: message)) }
    }
}

/// cuDNN engine config choices per convolution shape (an index into the heuristic's list; `TuningChoices` in
/// `<cache>/cudnn/`).
public final class ConvolutionChoices: TuningChoices, @unchecked Sendable {
    public init(path: String, gpu: String, cudnnVersion: Int) {
        super.init(path: path, gpu: gpu, library: "cudnn", version: cudnnVersion, field: "choices")
    }

    /// `<cache>/cudnn/<gpu tag>-cudnn<version>.json`.
    public static func defaultPath(gpuTag: String, cudnnVersion: Int) -> String {
        defaultPath(folder: "cudnn", gpuTag: gpuTag, library: "cudnn", version: cudnnVersion)
    }

    subscript(config shape: String) -> Int? {
        get { self[shape].flatMap { Int($0) } }
        set { self[shape] = newValue.map(String.init) }
    }
}
