import CKilnCUDA
import KilnBackends
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// Row and group normalizations, QK norm with rotary embedding, and the fused adaLN ops.
extension CUDABackend {
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

    /// Two launches after zeroing the sums (groupnorm.cu): per-group sums, then the normalization, which derives
    /// each channel's coefficients from the sums itself.
    public func groupNorm(_ x: CUDATensor, groups: Int, weight: CUDATensor, bias: CUDATensor, eps: Float, silu: Bool) -> CUDATensor {
        attempt {
            requireBF16(x, weight, bias, op: "groupNorm")
            let c = x.shape.last!, batch = x.shape[0]
            let pixels = x.count / (batch * c)
            precondition(c % groups == 0 && groups <= 64, "groupNorm: \(c) channels in \(groups) groups")
            let statsBuffer = try pool.allocate(batch * groups * 2 * 8)
            try DeviceCopy.fill8(statsBuffer.pointer, value: 0, count: batch * groups * 2 * 8, stream: currentStream)
            let (grid, block) = groupNormLaunch(pixels: pixels, channels: c, batch: batch)
            try launchKernel("groupnorm", "groupnorm_stats_bf16", grid: grid, block: block) {
                $0.add(statsBuffer.pointer); $0.add(x.pointer); $0.add(UInt64(pixels)); $0.add(Int32(c)); $0.add(Int32(groups))
            }
            let out = try empty(x.shape)
            try launchKernel("groupnorm", "groupnorm_apply_bf16", grid: grid, block: block) {
                $0.add(out.pointer); $0.add(x.pointer); $0.add(statsBuffer.pointer); $0.add(weight.pointer); $0.add(bias.pointer)
                $0.add(eps); $0.add(UInt64(pixels)); $0.add(Int32(c)); $0.add(Int32(groups)); $0.add(Int32(silu ? 1 : 0))
            }
            withExtendedLifetime(statsBuffer) {}
            return out
        }
    }

    /// The grid and block both group-norm kernels run: where C is a multiple of 8, blocks of whole pixels (a multiple
    /// of the C / 8 16-byte lanes of a pixel, about 256 threads, so each thread keeps one channel chunk); one row of
    /// blocks per batch item, in all about 1024 threads an SM (the kernels' 64-register bound lets that many stay
    /// resident, one wave), each striding over pixels, or fewer where the tensor is small.
    func groupNormLaunch(pixels: Int, channels: Int, batch: Int) -> (grid: (Int, Int, Int), block: (Int, Int, Int)) {
        let lanes = channels / 8
        let vector = channels % 8 == 0 && lanes <= 1024
        let threads = vector ? lanes * max(1, 256 / lanes) : 256
        let needed = vector ? (pixels + threads / lanes - 1) / (threads / lanes) : (pixels * channels + threads - 1) / threads
        let perItem = max(1, device.multiprocessors * (1024 / threads) / batch)
        return ((max(1, min(needed, perItem)), batch, 1), (threads, 1, 1))
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
    /// slices, no concatenation); V is copied into place by rows. 128-wide heads (FLUX) take one kernel for all three,
    /// and under FP8 attention (one image at a time) come out as FP8 (`attentionInputsFP8`).
    public func attentionInputs(_ streams: [QKVStream<CUDATensor>], eps: Float, heads: Int) -> (q: CUDATensor, k: CUDATensor, v: CUDATensor) {
        attempt {
            let batch = streams[0].qkv.shape[0], width = streams[0].qkv.shape[2] / 3, dim = width / heads
            precondition(streams[0].qkv.shape[2] == 3 * width && width == heads * dim && dim % 2 == 0,
                         "attentionInputs: \(streams[0].qkv.shape[2]) channels for 3 x \(heads) heads of an even size")
            for s in streams {
                requireBF16(s.qkv, s.queryNorm, s.keyNorm, op: "attentionInputs")
                let length = s.qkv.shape[1]
                precondition(s.qkv.shape == [batch, length, 3 * width], "attentionInputs: projection \(s.qkv.shape) with \(width) channels")
                if let table = s.rope {
                    precondition(table.cos.shape == [length, dim] && table.sin.shape == [length, dim], "attentionInputs: table \(table.cos.shape) for L \(length) D \(dim)")
                }
            }
            let total = streams.reduce(0) { $0 + $1.qkv.shape[1] }
            // The 128-wide kernels read 8 bytes a lane from every input.
            let wide = dim == 128 && streams.allSatisfy { s in
                [s.qkv.pointer, s.queryNorm.pointer, s.keyNorm.pointer, s.rope?.cos.pointer ?? 0, s.rope?.sin.pointer ?? 0].allSatisfy { $0 % 8 == 0 }
            }
            if attentionPrecision == .fp8, wide, batch == 1, streams.count <= 2,
               cudnn()?.fp8AttentionPlan(batch: batch, heads: heads, queries: total, keys: total, dim: dim) != nil {
                return try attentionInputsFP8(streams, eps: eps, heads: heads, total: total)
            }
            let (q, k, v) = (try empty([batch, total, width]), try empty([batch, total, width]), try empty([batch, total, width]))
            var offset = 0
            for s in streams {
                let length = s.qkv.shape[1]
                if wide {
                    try launchKernel("rope", "attention_inputs_d128", grid: ((batch * length * heads + 7) / 8, 1, 1), block: (256, 1, 1)) {
                        $0.add(q.pointer); $0.add(k.pointer); $0.add(v.pointer); $0.add(AttentionStreamArgument(s, offset: offset))
                        $0.add(eps); $0.add(Int32(heads)); $0.add(Int32(total))
                    }
                    offset += length
                    continue
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

    /// The joint Q, K, V as e4m3 with one scale per tensor, for cuDNN's FP8 attention, in two launches for both streams:
    /// Q and K are normed, rotated and written as FP8 with scales bound from the norm weights (no token needed), while
    /// V's absolute maximum is gathered per block; then V is quantized from the projections with the whole tensor's
    /// maximum (no BF16 copy of V). The descales sit 16 bytes apart (cuDNN's scalar tensors are declared 16-byte
    /// aligned): Q at 0, K at 16, V at 48 (32 is unused); each tensor's `scales` is a view of its descale
    /// (`perTensorScale`). The kernels index rows and chunks in 32 bits.
    func attentionInputsFP8(_ streams: [QKVStream<CUDATensor>], eps: Float, heads: Int, total: Int) throws -> (q: CUDATensor, k: CUDATensor, v: CUDATensor) {
        let batch = streams[0].qkv.shape[0], width = heads * 128
        let count = batch * total * width
        precondition(batch * total * max(heads, width / 8) < 1 << 32, "attentionInputsFP8: \(batch)x\(total) tokens overflow 32-bit indices")
        let slots = try pool.allocate(64)
        func fp8(slot: Int) throws -> CUDATensor {
            CUDATensor(storage: try pool.allocate(count), offset: 0, shape: [batch, total, width], type: .fp8,
                       scales: DeviceStorage(viewOf: slots, offset: 16 * slot, bytes: 4), perTensorScale: true)
        }
        let (q, k, v) = (try fp8(slot: 0), try fp8(slot: 1), try fp8(slot: 3))
        var offset = 0
        var arguments = streams.map { s in
            defer { offset += s.qkv.shape[1] }
            return AttentionStreamArgument(s, offset: offset)
        }
        if arguments.count == 1 { arguments.append(.none) }
        // One wave: the kernel's launch bounds fit 4 blocks of 256 an SM; its warps loop over the rows.
        let blocks = min((batch * total * heads + 7) / 8, device.multiprocessors * 4)
        let partials = try pool.allocate(blocks * 4)
        try launchKernel("rope", "attention_inputs_fp8_d128", grid: (blocks, 1, 1), block: (256, 1, 1)) {
            $0.add(q.pointer); $0.add(k.pointer); $0.add(slots.pointer); $0.add(partials.pointer); $0.add(arguments[0]); $0.add(arguments[1])
            $0.add(eps); $0.add(Int32(heads)); $0.add(Int32(total))
        }
        try launchKernel("rope", "quantize_v_fp8", grid: (device.multiprocessors * 8, 1, 1), block: (256, 1, 1)) {
            $0.add(v.pointer); $0.add(slots.pointer + 48); $0.add(partials.pointer); $0.add(Int32(blocks)); $0.add(arguments[0])
            $0.add(arguments[1]); $0.add(Int32(width)); $0.add(Int32(total))
        }
        return (q, k, v)
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

    // MARK: fused

    /// For quantizable linears under `linearPrecision` `.fp8` the result is FP8 with per-row scales
    /// (`layerNormModulateFP8`): the activation is quantized where it is made, not in a pass of its own.
    public func layerNormModulate(_ x: CUDATensor, shift: CUDATensor, scale: CUDATensor, eps: Float, feedsQuantizableLinears: Bool) -> CUDATensor {
        attempt {
            if feedsQuantizableLinears && linearPrecision == .fp8 { return try layerNormModulateFP8(x, shift: shift, scale: scale, eps: eps) }
            requireBF16(x, shift, scale, op: "layerNormModulate")
            let (rows, channels) = channelLayout(x, shift, op: "layerNormModulate")
            let out = try empty(x.shape)
            if try layerNormModulateByWarps([(out, ModulatedNormInput(x, shift: shift, scale: scale))], eps: eps) { return out }
            try launchKernel("norm", "layernorm_modulate_bf16", grid: (x.count / channels, 1, 1), block: rowBlock(channels, limit: 256)) {
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
        if try layerNormModulateByWarps([(out, ModulatedNormInput(x, shift: shift, scale: scale))], eps: eps) { return out }
        try launchKernel("norm", "layernorm_modulate_fp8", grid: (x.count / channels, 1, 1), block: rowBlock(channels, limit: 256), shared: channels * 4) {
            $0.add(out.pointer); $0.add(out.scales!.pointer); $0.add(x.pointer); $0.add(shift.pointer); $0.add(scale.pointer); $0.add(eps)
            $0.add(UInt64(rows)); $0.add(Int32(channels))
        }
        return out
    }

    /// Two inputs of one width take one launch of the warp kernel (each output FP8 or BF16 as the one-input form
    /// makes it); others, one launch each.
    public func layerNormModulate(_ inputs: [ModulatedNormInput<CUDATensor>], eps: Float, feedsQuantizableLinears: Bool) -> [CUDATensor] {
        attempt {
            let fp8 = feedsQuantizableLinears && linearPrecision == .fp8
            if inputs.count == 2, inputs[0].x.shape.last == inputs[1].x.shape.last, warpRowsFit(inputs) {
                for i in inputs {
                    requireBF16(i.x, i.shift, i.scale, op: "layerNormModulate")
                    _ = channelLayout(i.x, i.shift, op: "layerNormModulate")
                }
                let outs = try inputs.map { try empty($0.x.shape, fp8 ? .fp8 : .bf16) }
                if try layerNormModulateByWarps(Array(zip(outs, inputs)), eps: eps) { return outs }
            }
            return inputs.map { layerNormModulate($0.x, shift: $0.shift, scale: $0.scale, eps: eps, feedsQuantizableLinears: feedsQuantizableLinears) }
        }
    }

    /// Whether inputs fit the warp adaLN kernel: C a multiple of 256 up to 256 x `warpRowChunks`, 16-byte aligned rows
    /// and vectors.
    func warpRowsFit(_ inputs: [ModulatedNormInput<CUDATensor>]) -> Bool {
        inputs.allSatisfy { i in
            let channels = i.x.shape.last!
            return channels % 256 == 0 && channels <= 256 * CUDABackend.warpRowChunks
                && [i.x.pointer, i.shift.pointer, i.scale.pointer].allSatisfy { $0 % 16 == 0 }
        }
    }

    /// norm.cu's WARP_ROW_CHUNKS: 16-byte chunks a lane of the warp adaLN kernel holds.
    static let warpRowChunks = 12

    /// adaLN with a warp per row (`layernorm_modulate_warp`), one or two inputs of one width in one launch, where they
    /// fit it (`warpRowsFit`); false where they do not.
    func layerNormModulateByWarps(_ items: [(out: CUDATensor, input: ModulatedNormInput<CUDATensor>)], eps: Float) throws -> Bool {
        precondition(items.count == 1 || items.count == 2, "layerNormModulateByWarps: \(items.count) inputs")
        guard warpRowsFit(items.map(\.input)) else { return false }
        precondition(items.allSatisfy { $0.out.pointer % 16 == 0 }, "layerNormModulateByWarps: outputs are fresh pool buffers (256-byte aligned)")
        let channels = items[0].input.x.shape.last!
        precondition(MemoryLayout<AdaLNRowsArgument>.size == 56, "AdaLNRowsArgument must match norm.cu's AdaLNRows")
        let arguments = items.map { item in
            AdaLNRowsArgument(out: item.out.pointer, rowScale: item.out.type == .fp8 ? item.out.scales!.pointer : 0, x: item.input.x.pointer,
                              shift: item.input.shift.pointer, scale: item.input.scale.pointer, rows: UInt64(item.input.x.count / channels),
                              rowsPerBatch: UInt64(item.input.x.count / (item.input.x.shape[0] * channels)))
        } + (items.count == 1 ? [AdaLNRowsArgument()] : [])
        let rows = Int(arguments[0].rows + arguments[1].rows)
        try launchKernel("norm", "layernorm_modulate_warp", grid: ((rows + 3) / 4, 1, 1), block: (128, 1, 1)) {
            $0.add(arguments[0]); $0.add(arguments[1]); $0.add(eps); $0.add(Int32(channels))
        }
        return true
    }
}

/// norm.cu's `AdaLNRows`, a kernel parameter passed by value: seven 8-byte fields in the same order (zero rows: none).
struct AdaLNRowsArgument {
    var out: UInt64 = 0
    var rowScale: UInt64 = 0
    var x: UInt64 = 0
    var shift: UInt64 = 0
    var scale: UInt64 = 0
    var rows: UInt64 = 0
    var rowsPerBatch: UInt64 = 1
}

/// rope.cu's `AttentionStream`, a kernel parameter passed by value: eight 8-byte fields in the same order.
struct AttentionStreamArgument {
    var qkv: UInt64 = 0
    var queryNorm: UInt64 = 0
    var keyNorm: UInt64 = 0
    var cos: UInt64 = 0
    var sin: UInt64 = 0
    var tokens: UInt64 = 0
    var length: UInt64 = 0
    var offset: UInt64 = 0

    /// No stream (zero tokens).
    static let none = AttentionStreamArgument()

    private init() {}

    /// Stream `s`, its tokens placed from joint token `offset` on.
    init(_ s: QKVStream<CUDATensor>, offset: Int) {
        precondition(MemoryLayout<AttentionStreamArgument>.size == 64, "AttentionStreamArgument must match rope.cu's AttentionStream")
        qkv = s.qkv.pointer
        queryNorm = s.queryNorm.pointer
        keyNorm = s.keyNorm.pointer
        cos = s.rope?.cos.pointer ?? 0
        sin = s.rope?.sin.pointer ?? 0
        tokens = UInt64(s.qkv.shape[0] * s.qkv.shape[1])
        length = UInt64(s.qkv.shape[1])
        self.offset = UInt64(offset)
    }
}
