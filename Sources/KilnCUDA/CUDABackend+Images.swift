import CKilnCUDA
import KilnBackends
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// NHWC convolutions (cuDNN with fused epilogues, else im2col + GEMM) and upsampling.
extension CUDABackend {
    public func conv2d(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?, stride: Int, padding: Padding) -> CUDATensor {
        convolution(x, weight: weight, bias: bias, stride: stride, padding: padding, residual: nil)
    }

    public func conv2d(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?, stride: Int, padding: Padding,
                       residual: CUDATensor) -> CUDATensor {
        convolution(x, weight: weight, bias: bias, stride: stride, padding: padding, residual: residual)
    }

    /// Kiln's kernel for few output channels where it applies (`convolutionWithFewOutputs`), else cuDNN with the bias
    /// and residual in its epilogue where it has an engine for that graph, else cuDNN's plain convolution followed by
    /// our kernels, else im2col + GEMM.
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
            if convolutionKernel == .auto, residual == nil,
               let y = try convolutionWithFewOutputs(x, weight: weight, bias: bias, stride: stride, padding: padding, outHeight: outH, outWidth: outW) {
                lastConvolutionPath = "own"
                return y
            }
            if convolutionKernel != .gemm, outC % 8 != 0, residual == nil, cudnn() != nil {
                return try convolutionPaddingChannels(x, weight: weight, bias: bias, stride: stride, padding: padding)
            }
            if convolutionKernel != .gemm, let dnn = cudnn() {
                var y = try empty([batch, outH, outW, outC])
                func plan(bias b: Bool, residual r: Bool) -> CuDNN.Plan? {
                    dnn.convolutionPlan(batch: batch, channels: inC, height: height, width: width, outChannels: outC, kh: kh, kw: kw,
                                        stride: stride, padding: (padding.top, padding.left, padding.bottom, padding.right),
                                        outHeight: outH, outWidth: outW, bias: b, residual: r, tune: autotune && !pool.isCapturing ? { plans in
                        try self.fastestConvolution(plans, x: x.pointer, w: weight.pointer, y: y.pointer, bias: b ? self.nullable(bias) : 0,
                                                    residual: r ? self.nullable(residual) : 0)
                    } : nil)
                }
                let fused = plan(bias: bias != nil, residual: residual != nil)
                if let chosen = fused ?? plan(bias: false, residual: false) {
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

    /// The index of the fastest of `plans` (engine configs of one convolution) on the real operands: three rounds of
    /// three calls each (`roundRobinTrials`). Throws when none ran.
    func fastestConvolution(_ plans: [CuDNN.Plan], x: CUdeviceptr, w: CUdeviceptr, y: CUdeviceptr, bias: CUdeviceptr,
                            residual: CUdeviceptr) throws -> Int {
        guard let dnn = cudnn() else { throw KilnError.unsupported("cuDNN unavailable: \(cudnnError ?? "?")") }
        let workspace = try pool.allocate(max(1, plans.map(\.workspaceBytes).max() ?? 1))
        func run(_ i: Int) throws {
            try dnn.runConvolution(plans[i], x: x, w: w, y: y, bias: bias, residual: residual, workspace: workspace.pointer)
        }
        let start = try CUDAEvent(), end = try CUDAEvent()
        let trials = roundRobinTrials(Array(plans.indices), rounds: 3, stream: currentStream, run: run) { i in
            try start.record(currentStream)
            for _ in 0..<3 { try run(i) }
            try end.record(currentStream)
            try end.synchronize()
            return Double(try end.milliseconds(since: start)) / 3
        }
        guard let fastest = trials.first else { throw KilnError.unsupported("no convolution engine config ran") }
        return fastest.candidate
    }

    /// `convolution.cu`'s direct kernel, which reads the input once and writes the output at its exact width, for
    /// convolutions with at most 8 output channels (the VAE decoder's last, 128 → 3, where cuDNN took 0.34 ms at
    /// 1024x1024 plus a copy to drop the channels padded to 8): 3x3 or 1x1, stride 1, input channels a multiple of 8,
    /// input and filter 16-byte aligned. Nil where it does not apply.
    func convolutionWithFewOutputs(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?, stride: Int, padding: Padding,
                                   outHeight: Int, outWidth: Int) throws -> CUDATensor? {
        let (batch, height, width, inC) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (outC, kernelSize) = (weight.shape[0], weight.shape[1])
        // convolution.cu's CONV_WARPS x 16 columns and CONV_ROWS rows a block.
        let (blockWarps, blockRows) = (4, 8)
        guard outC <= 8, inC % 8 == 0, stride == 1, weight.shape[2] == kernelSize, kernelSize == 3 || kernelSize == 1,
              outHeight > 0, outWidth > 0, x.pointer % 16 == 0, weight.pointer % 16 == 0,
              batch <= 65_535, outHeight <= 65_535 * blockRows else { return nil }  // the grid's y and z limits
        let out = try empty([batch, outHeight, outWidth, outC])
        try launchKernel("convolution", "conv_few_outputs_bf16",
                         grid: ((outWidth + 16 * blockWarps - 1) / (16 * blockWarps), (outHeight + blockRows - 1) / blockRows, batch),
                         block: (32 * blockWarps, 1, 1)) {
            $0.add(out.pointer); $0.add(x.pointer); $0.add(weight.pointer); $0.add(nullable(bias)); $0.add(Int32(height))
            $0.add(Int32(width)); $0.add(Int32(inC)); $0.add(Int32(outC)); $0.add(Int32(outHeight)); $0.add(Int32(outWidth))
            $0.add(Int32(padding.top)); $0.add(Int32(padding.left)); $0.add(Int32(kernelSize))
        }
        return out
    }

    /// A convolution whose output channels are not a multiple of 8, on cuDNN (`KILN_CONV=cudnn`, or where
    /// `convolutionWithFewOutputs` does not apply): cuDNN's engines for such outputs are slow (70 ms at 1024x1024 for
    /// the VAE's 128 → 3 where 8 channels take well under one), so the filter and bias are zero-padded to a multiple
    /// of 8 and the extra channels dropped after.
    func convolutionPaddingChannels(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?, stride: Int, padding: Padding) throws -> CUDATensor {
        let outC = weight.shape[0], padded = (outC + 7) / 8 * 8
        let filter = try empty([padded] + weight.shape.dropFirst())
        try DeviceCopy.fill16(filter.pointer, value: 0, count: filter.count, stream: currentStream)
        try DeviceCopy.copy(weight.pointer, to: filter.pointer, bytes: weight.bytes, stream: currentStream)
        let paddedBias = try bias.map { b -> CUDATensor in
            let t = try empty([padded])
            try DeviceCopy.fill16(t.pointer, value: 0, count: padded, stream: currentStream)
            try DeviceCopy.copy(b.pointer, to: t.pointer, bytes: b.bytes, stream: currentStream)
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

    /// PNG image data made on the device (`image_rows_u8`): 3 bytes a pixel cross to the host instead of 2 a sample,
    /// and the host does no per-sample work.
    public func imageRows(_ x: CUDATensor) -> (rows: [UInt8], nonFinite: Int) {
        attempt {
            requireBF16(x, op: "imageRows")
            let (rows, rowSamples) = (x.shape[0] * x.shape[1], x.shape[2] * x.shape[3])
            let out = try pool.allocate(rows * (1 + rowSamples))
            let counter = try pool.allocate(4)
            try DeviceCopy.fill8(counter.pointer, value: 0, count: 4, stream: stream)
            try launchKernel("elementwise", "image_rows_u8", grid: elementwiseGrid(rows * (1 + rowSamples)), block: (256, 1, 1)) {
                $0.add(out.pointer); $0.add(counter.pointer); $0.add(x.pointer); $0.add(UInt32(rows)); $0.add(UInt32(rowSamples))
            }
            var bytes = [UInt8](repeating: 0, count: rows * (1 + rowSamples))
            var nonFinite: UInt32 = 0
            try bytes.withUnsafeMutableBytes { try DeviceCopy.download(out.pointer, to: $0.baseAddress!, bytes: $0.count, stream: stream) }
            try withUnsafeMutableBytes(of: &nonFinite) { try DeviceCopy.download(counter.pointer, to: $0.baseAddress!, bytes: 4, stream: stream) }
            try stream.synchronize()
            return (bytes, Int(nonFinite))
        }
    }

    /// One convolution with four 2x2 kernels (one per output pixel parity) on the low-resolution input, padded by one
    /// on each side (about 4 / 9 of the direct form's products, and no upsampled copy of the input), its bias repeated
    /// for the four parities, then a kernel that interleaves the four results into the upsampled image.
    public func upsampledConv2d(_ x: CUDATensor, weight: CUDATensor, bias: CUDATensor?) -> CUDATensor {
        attempt {
            requireBF16(x, weight, op: "upsampledConv2d")
            precondition(x.shape.count == 4, "upsampledConv2d: input \(x.shape) is not NHWC")
            let (batch, height, width, inC) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
            let outC = weight.shape[0] / 4
            precondition(weight.shape == [4 * outC, 2, 2, inC], "upsampledConv2d: weight \(weight.shape) for input \(x.shape) "
                         + "(load it as .upsamplingConvolution)")
            if let bias { requireBF16(bias, op: "upsampledConv2d bias"); precondition(bias.count == outC, "upsampledConv2d: bias \(bias.shape)") }
            let tiled = try bias.map { b -> CUDATensor in
                let t = try empty([4 * outC])
                try copyRows(dst: t.pointer, dstStride: outC, src: b.pointer, srcStride: 0, rows: 4, cols: outC)
                return t
            }
            let phases = convolution(x, weight: weight, bias: tiled, stride: 1, padding: .uniform(1), residual: nil)
            let out = try empty([batch, 2 * height, 2 * width, outC])
            try launchKernel("elementwise", "subpixel_shuffle_bf16", grid: chunkGrid(out.count), block: (256, 1, 1)) {
                $0.add(out.pointer); $0.add(phases.pointer); $0.add(Int32(height)); $0.add(Int32(width)); $0.add(Int32(outC))
                $0.add(UInt64(out.count))
            }
            return out
        }
    }

    /// A 3x3 kernel `[O, 3, 3, I]` as the four 2x2 kernels `[4·O, 2, 2, I]` of `upsampledConv2d`.
    func subpixelWeights(_ w: CUDATensor) throws -> CUDATensor {
        precondition(w.shape.count == 4 && w.shape[1] == 3 && w.shape[2] == 3, "upsampling convolution weight \(w.shape) is not 3x3")
        let (outC, inC) = (w.shape[0], w.shape[3])
        let out = try empty([4 * outC, 2, 2, inC])
        try launchKernel("elementwise", "subpixel_weights_bf16", grid: elementwiseGrid(out.count), block: (256, 1, 1)) {
            $0.add(out.pointer); $0.add(w.pointer); $0.add(Int32(outC)); $0.add(Int32(inC)); $0.add(UInt64(out.count))
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
}
