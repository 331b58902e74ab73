import CKilnCUDA
import KilnBackends
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// GEMMs (BF16 and FP8, fused epilogues, the gated residual), FP8 quantization and attention (cuDNN, own kernel, GEMMs).
extension CUDABackend {
    /// The plan for a GEMM shape: created once, its algorithm from the disk cache or autotuned on first use.
    public func plan(_ key: GemmKey, operands: GemmOperands) throws -> GemmPlan {
        if let p = plans[key] { return p }
        let p = try GemmPlan(lt, key)
        // Timing synchronizes, so it happens in eager work, which `concurrently` keeps on the main stream. Either way a
        // shape without any algorithm fails here (status 15), where `gemm` can fall back.
        if autotune { try tuner.tune(p, operands, stream: stream) } else { p.algorithm = try p.candidates(1).first }
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
        try launchKernel("norm", "quantize_rows_fp8", grid: (rows, 1, 1), block: rowBlock(channels)) {
            $0.add(out.pointer); $0.add(out.scales!.pointer); $0.add(x.pointer); $0.add(Int32(channels))
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
        precondition(!x.perTensorScale, "linear: FP8 input \(x.shape) has one scale for the tensor; GEMMs take one per row")
        let precision: GemmPrecision = weight.type == .fp8 ? .fp8 : .bf16
        var key = GemmKey(m: m, n: n, k: k, precision: precision, epilogue: epilogue)
        key.accumulate = residual != nil
        switch precision == .fp8 ? fp8Fallbacks[key] : nil {
        case .separateResidual?: return try add(residual!, gemm(x, weight: weight, bias: bias, epilogue: epilogue))
        case .paddedRows(let rows)?: return try gemmOnPaddedRows(x, weight: weight, bias: bias, epilogue: epilogue, rows: rows)
        case .bf16?: return try gemmInBF16(x, weight: weight, bias: bias, epilogue: epilogue, accumulate: residual)
        case nil: break
        }
        let out = try empty(Array(x.shape.dropLast()) + [n])
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
                // cuBLASLt has no FP8 kernel for a few shapes (FLUX.1-schnell's 256 text tokens into MLP-out): first
                // without C, then with the rows padded to 512 (each shape may fall back on its own), else in BF16.
                let fallback: FP8Fallback = residual != nil ? .separateResidual : m < 512 ? .paddedRows(512) : .bf16
                let how = switch fallback {
                case .separateResidual: "without C, then an add"
                case .paddedRows(let rows): "on its rows padded to \(rows)"
                case .bf16: "in BF16"
                }
                fputs("kiln: note: no cuBLASLt FP8 kernel for \(key); it runs \(how)\n", stderr)
                fp8Fallbacks[key] = fallback
                return try gemm(x, weight: weight, bias: bias, epilogue: epilogue, accumulate: residual)
            }
        }
        try runGemm(key, operands)
        return out
    }

    /// An FP8 GEMM on `x`'s rows copied into a `[rows, K]` matrix whose other rows are zero; the result is a view of the
    /// first rows of the padded output.
    func gemmOnPaddedRows(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?, epilogue: GemmEpilogue, rows: Int) throws -> CUDATensor {
        let k = x.shape.last!, m = x.count / k
        let input = x.type == .fp8 ? x : try quantizeRows(x)
        let padded = try empty([rows, k], .fp8)
        try DeviceCopy.copy(input.pointer, to: padded.pointer, bytes: m * k, stream: currentStream)
        try DeviceCopy.fill8(padded.pointer + CUdeviceptr(m * k), value: 0, count: (rows - m) * k, stream: currentStream)
        try DeviceCopy.copy(input.scales!.pointer, to: padded.scales!.pointer, bytes: m * 4, stream: currentStream)
        try DeviceCopy.fill8(padded.scales!.pointer + CUdeviceptr(m * 4), value: 0, count: (rows - m) * 4, stream: currentStream)
        let out = try gemm(padded, weight: weight, bias: bias, epilogue: epilogue)
        return CUDATensor(storage: out.storage, offset: out.offset, shape: Array(x.shape.dropLast()) + [weight.shape[0]], type: .bf16, scales: nil)
    }

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
            let (scales, gatedBias) = try gatedScales(weight, bias: bias, gate: gate)
            let gatedWeight = CUDATensor(storage: weight.storage, offset: weight.offset, shape: weight.shape, type: .fp8, scales: scales)
            return try gemm(x, weight: gatedWeight, bias: gatedBias, epilogue: epilogue, accumulate: residual)
        }
    }

    /// The weight's per-channel scales and the bias times a gate row `[1, n]`. FLUX's gates are rows of one modulation
    /// tensor computed for all steps before the loop, so the first use of such a tensor with a layer computes every row's
    /// scales in one launch and later steps take their row: one launch per layer and loop, not per step. The rows are
    /// kept on the gate tensor's storage (`DeviceStorage.derived`) and go with it. A capture reuses only rows made in it
    /// (its graph must hold the launch), and eager work leaves a capture's rows alone (its graph writes them).
    /// The row count comes from the storage's size class, so a few rows past the tensor may be computed and ignored.
    func gatedScales(_ weight: CUDATensor, bias: CUDATensor?, gate: CUDATensor) throws -> (scales: DeviceStorage, bias: CUDATensor?) {
        let n = weight.shape[0]
        let rowBytes = n * 2
        let key = GatedScalesKey(weight: weight.pointer, scales: weight.scales!.pointer, bias: bias?.pointer ?? 0, n: n)
        let known = gate.storage.derived[key]
        let cacheable = gate.offset % rowBytes == 0 && gate.storage.bytes / rowBytes <= 1024
            && (known == nil || known!.captureSerial == 0 || known!.captureSerial == pool.captureSerial)
        let (row, rows) = cacheable ? (gate.offset / rowBytes, gate.storage.bytes / rowBytes) : (0, 1)
        var entry = cacheable ? known.flatMap { $0.captureSerial == pool.captureSerial ? $0 as? GatedScales : nil } : nil
        if entry == nil {
            // A capture takes over the blocks of rows an eager run left on this gate (so it allocates no more than that
            // run did) and recomputes them in its graph.
            let eager = cacheable ? known as? GatedScales : nil
            let computed = try eager.map { GatedScales(scales: $0.scales, bias: $0.bias, captureSerial: pool.captureSerial) }
                ?? GatedScales(scales: try pool.allocate(rows * n * 4), bias: try bias.map { _ in try empty([rows, n]) },
                               captureSerial: pool.captureSerial)
            try launchKernel("elementwise", "gate_scales", grid: ((rows * n + 255) / 256, 1, 1), block: (256, 1, 1)) {
                $0.add(computed.scales.pointer); $0.add(nullable(computed.bias)); $0.add(cacheable ? gate.storage.pointer : gate.pointer)
                $0.add(weight.scales!.pointer); $0.add(nullable(bias)); $0.add(Int32(n)); $0.add(Int32(rows))
            }
            if cacheable { gate.storage.derived[key] = computed }
            entry = computed
        }
        let scales = DeviceStorage(viewOf: entry!.scales, offset: row * n * 4, bytes: n * 4)
        return (scales, entry!.bias.map { CUDATensor(storage: $0.storage, offset: row * rowBytes, shape: [n], type: .bf16, scales: nil) })
    }

    /// FP8 inputs (from `attentionInputs` under FP8 attention) take cuDNN's FP8 engine and give an FP8 output.
    public func attention(q: CUDATensor, k: CUDATensor, v: CUDATensor, heads: Int, scale: Float?, keyMask: CUDATensor?) -> CUDATensor {
        attempt {
            if q.type == .fp8 {
                precondition(keyMask == nil, "attention: FP8 inputs take no key mask")
                return try attentionFP8(q: q, k: k, v: v, heads: heads, scale: scale)
            }
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
            try launch(f, grid: ((queries + 127) / 128, heads, batch), block: (256, 1, 1), sharedBytes: shared, stream: currentStream,
                       name: "attention_fwd_bf16_d128", args)
            return out
        }
    }

    /// FP8 attention on cuDNN's fused FP8 flash attention (Hopper): `q`, `k`, `v` are `.fp8` `[B, L, H·D]` with per-tensor
    /// scales (element 0 of each `scales` buffer is the descale: value = code × descale). Returns `.fp8` `[B, Lq, H·D]`
    /// whose per-row scales all hold the output descale (V's × 1.125), so it feeds an FP8 GEMM as it is. Every scale is
    /// read and derived on the device (CUDA-graph capturable). Throws `KilnError.unsupported` where cuDNN has no engine.
    public func attentionFP8(q: CUDATensor, k: CUDATensor, v: CUDATensor, heads: Int, scale: Float?) throws -> CUDATensor {
        for t in [q, k, v] where t.type != .fp8 {
            throw KilnError.invalidArgument("attentionFP8: expects FP8 tensors, got \(t.type) \(t.shape)")
        }
        let (batch, queries, width) = (q.shape[0], q.shape[1], q.shape[2])
        let keys = k.shape[1]
        precondition(k.shape == [batch, keys, width] && v.shape == k.shape, "attentionFP8: q \(q.shape) k \(k.shape) v \(v.shape)")
        let d = width / heads
        guard let dnn = cudnn() else { throw KilnError.unsupported("cuDNN FP8 attention unavailable: \(cudnnError ?? "?")") }
        guard let plan = dnn.fp8AttentionPlan(batch: batch, heads: heads, queries: queries, keys: keys, dim: d) else {
            throw KilnError.unsupported("cuDNN has no FP8 attention engine for \(batch)x\(heads)x\(queries)x\(keys)x\(d): "
                + (dnn.fp8AttentionFailure(batch: batch, heads: heads, queries: queries, keys: keys, dim: d) ?? "?"))
        }
        let out = try empty(q.shape, .fp8)
        // scale_o, descale_s, scale_s (fp8_attention_scales), then cuDNN's amax of P and of O; 16 bytes apart.
        let scalars = try pool.allocate(5 * 16)
        let rows = batch * queries
        try launchKernel("elementwise", "fp8_attention_scales", grid: elementwiseGrid(rows), block: (256, 1, 1)) {
            $0.add(scalars.pointer); $0.add(out.scales!.pointer); $0.add(v.scales!.pointer); $0.add(UInt64(rows))
        }
        let workspace = plan.workspaceBytes > 0 ? try pool.allocate(plan.workspaceBytes) : nil
        try profiled("cudnn attention fp8 \(batch)x\(heads)x\(queries)x\(keys)x\(d)") {
            try dnn.runFP8Attention(plan, q: q.pointer, k: k.pointer, v: v.pointer, out: out.pointer,
                                    descaleQ: q.scales!.pointer, descaleK: k.scales!.pointer, descaleV: v.scales!.pointer,
                                    descaleS: scalars.pointer + 16, scaleS: scalars.pointer + 32, scaleO: scalars.pointer,
                                    amaxS: scalars.pointer + 48, amaxO: scalars.pointer + 64,
                                    scale: scale ?? 1 / Float(d).squareRoot(), workspace: workspace?.pointer ?? 0)
        }
        withExtendedLifetime((scalars, workspace)) {}
        return out
    }

    /// Attention for any head size with a score bias, as GEMMs around a row softmax (`attentionByGEMM`).
    public func attention(q: CUDATensor, k: CUDATensor, v: CUDATensor, heads: Int, scale: Float, bias: CUDATensor) -> CUDATensor {
        attempt {
            requireBF16(q, k, v, bias, op: "attention with bias")
            let (queries, keys) = (q.shape[1], k.shape[1])
            precondition(bias.shape == [heads, queries, keys] || bias.shape == [1, queries, keys], "attention: bias \(bias.shape)")
            return try attentionByGEMM(q: q, k: k, v: v, heads: heads, scale: scale, keyMask: nil, bias: bias)
        }
    }

    /// Scratch bytes (fp32 scores and BF16 probabilities) attention by GEMM takes for one group of heads.
    static let attentionScratchBytes = 256 << 20

    /// Attention as GEMMs batched over groups of heads around a row softmax (fp32 scores): any head size, key masks and
    /// score biases. Per group: `Q_h K_hᵀ` for its heads in one strided-batched GEMM, one softmax launch, `P_h V_h` in one
    /// more (Vᵀ of every head made once per sequence). A group is as many heads as fit `attentionScratchBytes` (T5-XXL's 64
    /// heads at 512 tokens: one group, 100 MB), at least one.
    func attentionByGEMM(q: CUDATensor, k: CUDATensor, v: CUDATensor, heads: Int, scale: Float, keyMask: CUDATensor?,
                         bias: CUDATensor? = nil) throws -> CUDATensor {
        let (batch, queries, width) = (q.shape[0], q.shape[1], q.shape[2])
        let keys = k.shape[1]
        let d = width / heads
        lastAttentionPath = "gemm"
        let out = try empty(q.shape)
        let group = max(1, min(heads, CUDABackend.attentionScratchBytes / (queries * keys * 6)))
        let scores = try pool.allocate(group * queries * keys * 4)
        let probabilities = try pool.allocate(group * queries * keys * 2)
        let vt = try pool.allocate(width * keys * 2)
        // Heads start h·d elements into a row: as aligned as the largest power of two dividing 2·d (and 2·width).
        var alignment = 256
        while (2 * d) % alignment != 0 || (2 * width) % alignment != 0 { alignment /= 2 }
        func gemmKeys(_ count: Int) -> (scores: GemmKey, out: GemmKey) {
            var scoreKey = GemmKey(m: queries, n: keys, k: d, precision: .bf16)
            scoreKey.strideX = width; scoreKey.strideW = width; scoreKey.outputF32 = true; scoreKey.alignment = alignment
            (scoreKey.batch, scoreKey.batchStrideX, scoreKey.batchStrideW, scoreKey.batchStrideOut) = (count, d, d, queries * keys)
            var outKey = GemmKey(m: queries, n: d, k: keys, precision: .bf16)
            outKey.strideOut = width; outKey.alignment = alignment
            (outKey.batch, outKey.batchStrideX, outKey.batchStrideW, outKey.batchStrideOut) = (count, queries * keys, d * keys, d)
            return (scoreKey, outKey)
        }
        let perHeadBias = bias.map { $0.shape[0] != 1 } ?? false
        let warpRows = keys % 4 == 0 && keys <= 1024
        for b in 0..<batch {
            let vb = v.pointer + CUdeviceptr(b * keys * width * 2)
            // Vᵀ of every head at once: row h·d + i holds channel i of head h over the keys.
            try launchKernel("softmax", "transpose_bf16", grid: ((width + 31) / 32, (keys + 31) / 32, 1), block: (32, 8, 1)) {
                $0.add(vt.pointer); $0.add(vb); $0.add(UInt64(keys)); $0.add(Int32(width)); $0.add(UInt64(width))
            }
            for first in stride(from: 0, to: heads, by: group) {
                let count = min(group, heads - first)
                let (scoreKey, outKey) = gemmKeys(count)
                let head = CUdeviceptr(first * d * 2)
                let qb = q.pointer + CUdeviceptr(b * queries * width * 2) + head
                let kb = k.pointer + CUdeviceptr(b * keys * width * 2) + head
                let ob = out.pointer + CUdeviceptr(b * queries * width * 2) + head
                try runGemm(scoreKey, GemmOperands(x: qb, w: kb, out: scores.pointer))
                // The group's rows in one launch (a warp per row where rows are short); a bias shared by the heads repeats
                // every `queries` rows.
                let rows = count * queries
                try launchKernel("softmax", warpRows ? "softmax_rows_warp_f32_bf16" : "softmax_rows_f32_bf16",
                                 grid: (warpRows ? (rows + 7) / 8 : rows, 1, 1), block: (256, 1, 1)) {
                    $0.add(probabilities.pointer); $0.add(scores.pointer)
                    $0.add(keyMask.map { $0.pointer + CUdeviceptr(b * keys * 2) } ?? 0)
                    $0.add(bias.map { $0.pointer + CUdeviceptr(perHeadBias ? first * queries * keys * 2 : 0) } ?? 0)
                    $0.add(UInt64(perHeadBias ? rows : queries)); $0.add(scale)
                    $0.add(UInt64(rows)); $0.add(Int32(keys))
                }
                try runGemm(outKey, GemmOperands(x: probabilities.pointer, w: vt.pointer + CUdeviceptr(first * d * keys * 2), out: ob))
            }
        }
        withExtendedLifetime((scores, probabilities, vt)) {}
        return out
    }

    /// cuDNN's attention, loaded on first use; nil (reason in `cudnnError`) when cuDNN is absent.
    public func cudnn() -> CuDNN? {
        if let state = cudnnState { return state.library }
        do {
            let dnn = try CuDNN(stream: currentStream)
            dnn.convolutionChoices = ConvolutionChoices(path: ConvolutionChoices.defaultPath(gpuTag: device.cacheTag, cudnnVersion: dnn.version),
                                                        gpu: device.name, cudnnVersion: dnn.version)
            cudnnState = (dnn, nil)
        } catch {
            cudnnState = (nil, "\(error)")
        }
        return cudnnState!.library
    }

    public var cudnnError: String? { cudnnState?.error }
}

/// The layer a gate's scales were computed for.
struct GatedScalesKey: Hashable {
    let weight: CUdeviceptr
    let scales: CUdeviceptr
    let bias: CUdeviceptr
    let n: Int
}

/// A layer's gated scales (and bias) for every row of one gate tensor.
final class GatedScales: DerivedValue {
    let scales: DeviceStorage
    let bias: CUDATensor?
    let captureSerial: Int

    init(scales: DeviceStorage, bias: CUDATensor?, captureSerial: Int) {
        (self.scales, self.bias, self.captureSerial) = (scales, bias, captureSerial)
    }
}
