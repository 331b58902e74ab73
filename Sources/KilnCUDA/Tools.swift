import CKilnCUDA
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// `kiln doctor` and `kiln compile`, as library functions (the CLI commands are thin wrappers).
public enum CUDATools {
    static func say(_ line: String) { print(line); fflush(stdout) }

    /// Prints the GPU, the libraries found (paths, versions) and runs one GEMM against the CPU. Returns the exit code.
    public static func doctor() -> Int32 {
        var problems: [String] = []
        let device: CUDADevice
        do {
            device = try CUDADevice()
        } catch {
            say("GPU:        none: \(error)")
            for lib in [CUDALibrary.nvrtc, .cublasLt] {
                do { say("\(lib.label.padding(11)) \(try lib.load())") } catch { say("\(lib.label.padding(11)) missing: \(error)") }
            }
            return 1
        }
        let (free, total) = (try? device.memoryInfo()) ?? (0, device.totalMemory)
        say("GPU:        \(device.name), compute capability \(device.computeCapability.major).\(device.computeCapability.minor) (\(device.arch)), "
            + "\(device.multiprocessors) SMs, \(device.l2Bytes >> 20) MiB L2, \(total >> 30) GiB (\(free >> 30) GiB free)")
        say("driver:     \(device.driverPath), CUDA \(device.driverVersion / 1000).\((device.driverVersion % 1000) / 10)")
        do {
            let compiler = try KernelCompiler(arch: device.arch)
            say("NVRTC:      \(compiler.nvrtcPath), \(compiler.nvrtcVersion.major).\(compiler.nvrtcVersion.minor)")
            say("kernels:    \(compiler.sourceFolder)")
            say("cache:      \(compiler.cacheDirectory)")
        } catch { say("NVRTC:      missing: \(error)"); problems.append("NVRTC") }
        do {
            let lt = try CuBLASLt()
            say("cuBLASLt:   \(lt.path), \(lt.versionText)")
        } catch { say("cuBLASLt:   missing: \(error)"); problems.append("cuBLASLt") }
        do {
            let path = try CUDALibrary.cudnn.load()
            say("cuDNN:      \(path), \(kc_dnn.cudnnGetVersion!()) (fused attention)")
        } catch { say("cuDNN:      not found (attention runs on Kiln's own kernel): \(error)") }
        if problems.isEmpty {
            do {
                let backend = try CUDABackend(device: device)
                backend.autotune = false
                var rng = NoiseGenerator(seed: 7)
                let x = rng.tensor([256, 512]), w = rng.tensor([384, 512], scale: 0.05)
                let start = MonotonicClock.now()
                let y = backend.host(backend.linear(backend.tensor(x), weight: backend.tensor(w), bias: nil, activation: .none))
                let seconds = MonotonicClock.now() - start
                let error = y.relativeError(to: referenceLinear(x, w))
                let ok = error <= 1e-2
                say("GEMM smoke: 256x384x512 BF16 relative error \(format(error, 2, exponent: true)) in \(format(seconds * 1000, 1)) ms "
                    + "(first call, includes kernel load): \(ok ? "ok" : "FAILED")")
                if !ok { problems.append("GEMM") }
            } catch { say("GEMM smoke: FAILED: \(error)"); problems.append("GEMM") }
        }
        say(problems.isEmpty ? "doctor: all good" : "doctor: problems with \(problems.joined(separator: ", "))")
        return problems.isEmpty ? 0 : 1
    }

    /// fp32 reference of `x · wᵀ` (kept here so `doctor` needs no CPU backend instance).
    static func referenceLinear(_ x: HostTensor, _ w: HostTensor) -> HostTensor {
        let (m, k, n) = (x.shape[0], x.shape[1], w.shape[0])
        var out = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { var s: Float = 0; for l in 0..<k { s += x.data[i * k + l] * w.data[j * k + l] }; out[i * n + j] = s } }
        return HostTensor(shape: [m, n], data: out)
    }

    /// Compiles every kernel family for `arch` (the GPU's when nil), filling the cache unless `check`; with `check`
    /// only NVRTC is needed (no GPU). Prints per-kernel times; returns the exit code.
    public static func compile(arch requested: String?, check: Bool, force: Bool, verbose: Bool = false) -> Int32 {
        do {
            let arch: String
            if let requested { arch = requested } else {
                let device = try CUDADevice()
                arch = device.arch
            }
            let compiler = try KernelCompiler(arch: arch)
            let sources = try KernelSources.all(in: compiler.sourceFolder)
            say("NVRTC \(compiler.nvrtcVersion.major).\(compiler.nvrtcVersion.minor) (\(compiler.nvrtcPath)), target \(arch), "
                + "\(sources.count) kernel families from \(compiler.sourceFolder)")
            if !check { say("cache: \(compiler.cacheDirectory)") }
            var failures = 0
            var total = 0.0
            for source in sources {
                do {
                    let r = try compiler.cubin(for: source, extraOptions: verbose ? ["--ptxas-options=-v"] : [], readCache: !check && !force, writeCache: !check && !verbose)
                    total += r.seconds
                    let warnings = r.log.split(separator: "\n").filter { $0.contains("warning") }.count
                    say("  \(source.name.padding(12)) \(format(r.seconds * 1000, 1).leftPadding(8)) ms  \(r.cubin.count) bytes"
                        + (r.cached ? "  (cached)" : "") + (warnings > 0 ? "  \(warnings) warnings" : ""))
                    if warnings > 0 || verbose { say(r.log) }
                } catch {
                    failures += 1
                    say("  \(source.name.padding(12)) FAILED: \(error)")
                }
            }
            say("\(sources.count - failures) compiled, \(failures) failed, \(format(total, 2)) s")
            return failures == 0 ? 0 : 1
        } catch {
            fputs("kiln compile: \(error)\n", stderr)
            return 1
        }
    }
}

// MARK: small helpers

extension NoiseGenerator {
    /// A tensor of N(0, scale²) values rounded to BF16 (so device and reference see the same inputs); never zeros.
    public mutating func tensor(_ shape: [Int], scale: Float = 1, offset: Float = 0) -> HostTensor {
        let n = shape.reduce(1, *)
        var data = [Float](repeating: 0, count: n)
        for i in 0..<n { data[i] = NumberFormats.bf16ToFloat(NumberFormats.floatToBF16(offset + scale * normal())) }
        return HostTensor(shape: shape, data: data)
    }
}

func format(_ value: Double, _ digits: Int, exponent: Bool = false) -> String {
    guard value.isFinite else { return "\(value)" }
    var buffer = [CChar](repeating: 0, count: 64)
    _ = withVaList([value]) { vsnprintf(&buffer, 64, exponent ? "%.\(digits)e" : "%.\(digits)f", $0) }
    return String(cString: buffer)
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
    func leftPadding(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}
