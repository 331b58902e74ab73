import KilnCore
#if canImport(Glibc)
import Glibc
#endif

extension GPUSelftest {
    /// Whether the tuner's choices, timed in short bursts, are also the fastest when the GPU sits at its power limit,
    /// as it does through a denoising loop: there a GEMM's time follows its energy per call, not its cycles at full
    /// clock. For each of FLUX's FP8 GEMM shapes (M = 4608, the real epilogues), the tuner's pick and the screen's next
    /// best configurations each run alone for `heat` seconds (long enough for the clocks to settle at that kernel's
    /// power), then 40 calls are timed; two passes in opposite order, medians.
    public func sustainedGemmRanking(contenders count: Int = 6, heat: Double = 0.6) {
        say("FP8 GEMM choices under sustained load (M = 4608): burst = the tuner's screen, sustained = after \(heat) s alone")
        for shape in GPUSelftest.fluxGemms {
            do {
                let key = GemmKey(m: 4608, n: shape.n, k: shape.k, precision: .fp8, epilogue: shape.epilogue)
                let x = try gpu.quantizeRows(gpu.upload(rng.tensor([key.m, key.k])))
                let w = try gpu.quantizeRows(gpu.upload(rng.tensor([key.n, key.k], scale: 0.02)))
                let bias = try gpu.upload(rng.tensor([key.n], scale: 0.1)), out = try gpu.empty([key.m, key.n])
                let operands = GemmOperands(x: x.pointer, w: w.pointer, out: out.pointer, bias: bias.pointer,
                                            xScale: x.scales!.pointer, wScale: w.scales!.pointer)
                let plan = try GemmPlan(gpu.lt, key)
                try gpu.tuner.tune(plan, operands, stream: gpu.stream, force: true)
                guard let chosen = plan.algorithm else { continue }
                let screened = try gpu.tuner.screen(plan, operands, stream: gpu.stream, first: try plan.candidates(64))
                var contenders = [chosen]
                for t in screened where contenders.count < count && !contenders.contains(t.algorithm) { contenders.append(t.algorithm) }
                var samples = [[Double]](repeating: [], count: contenders.count)
                for pass in 0..<2 {
                    for i in pass == 0 ? Array(contenders.indices) : contenders.indices.reversed() {
                        let start = MonotonicClock.now()
                        while MonotonicClock.now() - start < heat {
                            for _ in 0..<20 { try plan.run(operands, stream: gpu.stream, algorithm: contenders[i]) }
                            try gpu.stream.synchronize()
                        }
                        samples[i].append(try plan.time(operands, stream: gpu.stream, algorithm: contenders[i], warmup: 0, repeats: 40, batches: 3))
                    }
                }
                say("  \(shape.name) \(key.m)x\(key.n)x\(key.k) \(shape.epilogue.rawValue):")
                for (i, a) in contenders.enumerated() {
                    let burst = screened.first { $0.algorithm == a }?.milliseconds ?? .nan
                    let ms = median(samples[i])
                    say("    \(i == 0 ? "tuned " : "      ") burst \(format(burst, 4)) ms  sustained \(format(ms, 4)) ms "
                        + "(\(format(key.flops / ms / 1e9, 0)) TFLOP/s)  [\(a.summary)]")
                }
                withExtendedLifetime([x, w, bias, out]) {}
            } catch {
                say("  FAIL \(shape.name): \(error)")
            }
        }
    }
}
