import XCTest
import KilnCore
@testable import KilnCUDA
#if canImport(Glibc)
import Glibc
#endif

/// CPU-only tests of the CUDA layer: what can be checked without a GPU or NVIDIA libraries.
final class KilnCUDATests: XCTestCase {
    func testMissingDriverIsOneClearError() throws {
        // On machines with a GPU this path cannot be exercised; CI has none.
        do {
            _ = try CUDADevice()
            throw XCTSkip("a CUDA driver and GPU are present")
        } catch let error as CUDAUnavailable {
            XCTAssertTrue(error.message.contains("libcuda") || error.message.contains("GPU"), error.message)
            XCTAssertFalse(error.message.contains("\n"), "one line: \(error.message)")
        }
    }

    func testMissingLibraryMessageNamesInstallHint() throws {
        setenv("KILN_CUDA_LIBS", "/nonexistent/kiln-libs", 1)
        defer { unsetenv("KILN_CUDA_LIBS") }
        do {
            try CUDALibrary.cublasLt.load()
            throw XCTSkip("cuBLASLt is installed here")
        } catch let error as CUDAUnavailable {
            XCTAssertTrue(error.message.contains("pip install nvidia-cublas"), error.message)
            XCTAssertTrue(error.message.contains("/nonexistent/kiln-libs"), "lists the folders searched: \(error.message)")
        }
    }

    func testSearchOrderStartsWithKilnCudaLibsThenSystemLoader() {
        setenv("KILN_CUDA_LIBS", "/a/one:/b/two", 1)
        defer { unsetenv("KILN_CUDA_LIBS") }
        let folders = CUDALibrary.searchFolders
        XCTAssertEqual(Array(folders.prefix(3)), ["/a/one", "/b/two", "(system loader)"])
        XCTAssertTrue(folders.contains("/usr/local/cuda/lib64"))
    }

    func testVirtualEnvironmentWheelsAreSearched() throws {
        let root = "/tmp/kiln-venv-test-\(getpid())"
        try CacheDirectory.makeDirectories(root + "/lib/python3.12/site-packages/nvidia/cu13/lib")
        setenv("VIRTUAL_ENV", root, 1)
        defer { unsetenv("VIRTUAL_ENV") }
        XCTAssertEqual(CUDALibrary.searchFolders.last, root + "/lib/python3.12/site-packages/nvidia/cu13/lib")
    }

    func testCacheKeyChangesWithEveryInput() {
        let base = KernelCompiler.cacheKey(source: "a", header: "h", options: ["-x"], nvrtcVersion: (13, 0), arch: "sm_90a")
        XCTAssertEqual(base, KernelCompiler.cacheKey(source: "a", header: "h", options: ["-x"], nvrtcVersion: (13, 0), arch: "sm_90a"))
        XCTAssertEqual(base.count, 32)
        let variants = [
            KernelCompiler.cacheKey(source: "b", header: "h", options: ["-x"], nvrtcVersion: (13, 0), arch: "sm_90a"),
            KernelCompiler.cacheKey(source: "a", header: "H", options: ["-x"], nvrtcVersion: (13, 0), arch: "sm_90a"),
            KernelCompiler.cacheKey(source: "a", header: "h", options: ["-y"], nvrtcVersion: (13, 0), arch: "sm_90a"),
            KernelCompiler.cacheKey(source: "a", header: "h", options: ["-x"], nvrtcVersion: (13, 1), arch: "sm_90a"),
            KernelCompiler.cacheKey(source: "a", header: "h", options: ["-x"], nvrtcVersion: (13, 0), arch: "sm_89"),
        ]
        XCTAssertEqual(Set(variants + [base]).count, 6)
        // Concatenation boundaries matter.
        XCTAssertNotEqual(stableDigest(["ab", "c"]), stableDigest(["a", "bc"]))
    }

    func testArchitectureNames() {
        XCTAssertEqual(KernelCompiler.arch(major: 9, minor: 0), "sm_90a")
        XCTAssertEqual(KernelCompiler.arch(major: 8, minor: 9), "sm_89")
        XCTAssertEqual(KernelCompiler.arch(major: 8, minor: 0), "sm_80")
    }

    func testCacheRootFollowsXDG() {
        unsetenv("KILN_CACHE_DIR")
        setenv("XDG_CACHE_HOME", "/tmp/xdg-test", 1)
        defer { unsetenv("XDG_CACHE_HOME") }
        XCTAssertEqual(CacheDirectory.root(), "/tmp/xdg-test/kiln")
        setenv("KILN_CACHE_DIR", "/tmp/explicit", 1)
        defer { unsetenv("KILN_CACHE_DIR") }
        XCTAssertEqual(CacheDirectory.root(), "/tmp/explicit")
    }

    /// Every kernel the backend launches exists, `extern "C"`, in the family it is looked up in.
    func testKernelSourcesDefineEverySymbolTheBackendLaunches() throws {
        let folder = try KernelSources.directory()
        let sources = Dictionary(uniqueKeysWithValues: try KernelSources.all(in: folder).map { ($0.name, $0.text) })
        XCTAssertTrue(try KernelSources.header(in: folder).contains("f2bf"))
        let swiftFolder = FileIO.join(folder, "..")
        let backend = try FileIO.list(swiftFolder).filter { $0.hasSuffix(".swift") }
            .map { try FileIO.readText(FileIO.join(swiftFolder, $0)) }.joined(separator: "\n")
        var launched: [(String, String)] = []
        var rest = Substring(backend)
        while let r = rest.range(of: "launchKernel(\"") {
            let tail = rest[r.upperBound...]
            let parts = tail.split(separator: "\"", maxSplits: 3)
            launched.append((String(parts[0]), String(parts[2])))
            rest = tail
        }
        XCTAssertGreaterThan(launched.count, 10)
        for (family, symbol) in launched {
            let text = try XCTUnwrap(sources[family], "no kernel family \(family).cu")
            // `extern "C" __global__ void [__launch_bounds__(...)] symbol(` or the symbol opening a line.
            let declared = text.split(separator: "\n").contains { line in
                (line.hasPrefix("extern \"C\" __global__") && line.contains(" \(symbol)(")) || line.hasPrefix("\(symbol)(")
            }
            XCTAssertTrue(declared, "\(family).cu lacks \(symbol)")
        }
        XCTAssertTrue(sources["attention"]?.contains("attention_fwd_bf16_d128(") ?? false)
    }

    func testGemmAlgorithmHexRoundTrip() throws {
        let words: [UInt64] = [1, 0xffff_ffff_ffff_ffff, 0, 42, 7, 0x1234_5678_9abc_def0, 3, 9]
        var algo = GemmAlgorithm(hex: words.map { String($0, radix: 16) }.joined(separator: "-"))
        XCTAssertEqual(algo?.words, words)
        algo = GemmAlgorithm(hex: algo!.hex)
        XCTAssertEqual(algo?.words, words)
        XCTAssertNil(GemmAlgorithm(hex: "1-2-3"))
        XCTAssertNil(GemmAlgorithm(hex: "1-2-3-4-5-6-7-zz"))
    }

    func testPlanCacheSavesAndReloadsPerGPUAndVersion() throws {
        let path = "/tmp/kiln-plan-cache-\(getpid())/gemm.json"
        defer { unlink(path) }
        let key = GemmKey(m: 4608, n: 3072, k: 3072, precision: .fp8, epilogue: .biasGelu)
        let algo = try XCTUnwrap(GemmAlgorithm(hex: "1-2-3-4-5-6-7-8"))
        let cache = GemmPlanCache(path: path, gpu: "NVIDIA H100 80GB HBM3", cublasLtVersion: 130100)
        cache[key] = algo
        try cache.save()
        XCTAssertEqual(GemmPlanCache(path: path, gpu: "NVIDIA H100 80GB HBM3", cublasLtVersion: 130100)[key], algo)
        XCTAssertNil(GemmPlanCache(path: path, gpu: "NVIDIA H200", cublasLtVersion: 130100)[key], "another GPU's choices are not used")
        XCTAssertNil(GemmPlanCache(path: path, gpu: "NVIDIA H100 80GB HBM3", cublasLtVersion: 130000)[key], "another cuBLASLt's choices are not used")
        XCTAssertEqual(key.description, "fp8 m4608 n3072 k3072 bias+gelu")
    }

    func testConvolutionChoicesSaveAndReloadPerGPUAndVersion() throws {
        let path = "/tmp/kiln-conv-choices-\(getpid())/cudnn.json"
        defer { unlink(path) }
        let choices = ConvolutionChoices(path: path, gpu: "NVIDIA H100 80GB HBM3", cudnnVersion: 91400)
        choices[config: "1x128x128x512->512 3x3/1 pad 1,1,1,1 bias"] = 3
        try choices.save()
        XCTAssertEqual(ConvolutionChoices(path: path, gpu: "NVIDIA H100 80GB HBM3", cudnnVersion: 91400)[config: "1x128x128x512->512 3x3/1 pad 1,1,1,1 bias"], 3)
        XCTAssertNil(ConvolutionChoices(path: path, gpu: "NVIDIA H200", cudnnVersion: 91400)[config: "1x128x128x512->512 3x3/1 pad 1,1,1,1 bias"])
        XCTAssertNil(ConvolutionChoices(path: path, gpu: "NVIDIA H100 80GB HBM3", cudnnVersion: 91900)[config: "1x128x128x512->512 3x3/1 pad 1,1,1,1 bias"])
    }

    func testPoolSizeClasses() {
        XCTAssertEqual(DevicePool.sizeClass(1), 512)
        XCTAssertEqual(DevicePool.sizeClass(513), 1024)
        XCTAssertEqual(DevicePool.sizeClass(1 << 20), 1 << 20)
        XCTAssertEqual(DevicePool.sizeClass((1 << 20) + 1), 2 << 20)
        XCTAssertEqual(DevicePool.sizeClass(5 << 20), 6 << 20)
        XCTAssertEqual(DeviceArena.aligned(1), 256)
        XCTAssertEqual(DeviceArena.aligned(257), 512)
    }

    func testHostFP8QuantizationIsRowWise() {
        let h = HostTensor(shape: [2, 4], data: [448, -224, 1, 0.5, 0.001, 0.002, -0.004, 0.0035])
        let q = GPUSelftest.quantizeRowsOnHost(h)
        XCTAssertEqual(Array(q.data[0..<4]), [448, -224, 1, 0.5])
        XCTAssertEqual(q.data[6], -0.004, accuracy: 1e-9)  // the row's amax maps to 448 exactly
        XCTAssertLessThan(q.relativeError(to: h), 0.05)
    }

    func testRandomTensorsAreDeterministicAndNeverAllZero() {
        var a = NoiseGenerator(seed: 1), b = NoiseGenerator(seed: 1)
        let x = a.tensor([64]), y = b.tensor([64])
        XCTAssertEqual(x, y)
        XCTAssertTrue(x.data.contains { $0 != 0 })
    }
}
