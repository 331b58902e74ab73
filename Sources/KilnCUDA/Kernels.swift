import CKilnCUDA
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// One kernel family's CUDA C++ source (`Kernels/<name>.cu`).
public struct KernelSource: Sendable {
    public let name: String
    public let text: String
}

/// Finds the kernel sources at run time (they are not SwiftPM resources, which would pull in Foundation):
/// `KILN_KERNEL_DIR`, then `kiln-kernels/` beside the executable, then `Sources/KilnCUDA/Kernels` in a folder above
/// the executable (a source checkout), then the same below the working directory.
public enum KernelSources {
    /// Shared header every kernel includes as `#include "kiln_common.cuh"`.
    public static let commonHeader = "kiln_common.cuh"

    public static func executablePath() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        buffer[n] = 0
        return String(cString: buffer)
    }

    /// The folders tried, in order.
    public static func candidateFolders() -> [String] {
        var folders: [String] = []
        if let dir = FileIO.environment("KILN_KERNEL_DIR"), !dir.isEmpty { folders.append(dir) }
        if let exe = executablePath() {
            var dir = FileIO.directory(of: exe)
            folders.append(FileIO.join(dir, "kiln-kernels"))
            for _ in 0..<8 {
                folders.append(FileIO.join(dir, "Sources/KilnCUDA/Kernels"))
                let parent = FileIO.directory(of: dir)
                if parent == dir { break }
                dir = parent
            }
        }
        var cwd = [CChar](repeating: 0, count: 4096)
        if getcwd(&cwd, cwd.count) != nil { folders.append(FileIO.join(String(cString: cwd), "Sources/KilnCUDA/Kernels")) }
        return folders
    }

    /// The first candidate folder holding the common header.
    public static func directory() throws -> String {
        let folders = candidateFolders()
        for folder in folders where FileIO.exists(FileIO.join(folder, commonHeader)) { return folder }
        throw KilnError.unsupported("CUDA kernel sources not found (looked for \(commonHeader) in: \(folders.joined(separator: ", "))); "
            + "set KILN_KERNEL_DIR or put the kiln-kernels folder beside the executable")
    }

    /// Every `.cu` family in `folder`, sorted by name.
    public static func all(in folder: String? = nil) throws -> [KernelSource] {
        let dir = try folder ?? directory()
        return try FileIO.list(dir).filter { $0.hasSuffix(".cu") }.map {
            KernelSource(name: String($0.dropLast(3)), text: try FileIO.readText(FileIO.join(dir, $0)))
        }
    }

    public static func load(_ name: String, in folder: String? = nil) throws -> KernelSource {
        let dir = try folder ?? directory()
        return KernelSource(name: name, text: try FileIO.readText(FileIO.join(dir, name + ".cu")))
    }

    public static func header(in folder: String? = nil) throws -> String {
        try FileIO.readText(FileIO.join(try folder ?? directory(), commonHeader))
    }
}

/// Compiles kernel families with NVRTC to cubins for one architecture, caching them on disk.
public final class KernelCompiler: @unchecked Sendable {
    public let arch: String
    public let nvrtcVersion: (major: Int, minor: Int)
    public let nvrtcPath: String
    public let cacheDirectory: String
    public let header: String
    public let sourceFolder: String

    /// NVRTC's target for a compute capability: the arch-specific `a` variant on Hopper (sm_90a).
    public static func arch(major: Int, minor: Int) -> String {
        major == 9 && minor == 0 ? "sm_90a" : "sm_\(major)\(minor)"
    }

    public init(arch: String, cacheDirectory: String? = nil, sourceFolder: String? = nil) throws {
        nvrtcPath = try CUDALibrary.nvrtc.load()
        var major: Int32 = 0, minor: Int32 = 0
        try checkNVRTC(kc_nvrtc.nvrtcVersion!(&major, &minor), "nvrtcVersion")
        nvrtcVersion = (Int(major), Int(minor))
        self.arch = arch
        self.cacheDirectory = cacheDirectory ?? FileIO.join(CacheDirectory.root(), "kernels")
        self.sourceFolder = try sourceFolder ?? KernelSources.directory()
        header = try KernelSources.header(in: self.sourceFolder)
    }

    /// The NVRTC options for a family.
    public func options(extra: [String] = []) -> [String] {
        ["--gpu-architecture=\(arch)", "-std=c++17", "-default-device", "--restrict", "-DKILN_NVRTC=1"] + extra
    }

    /// The cache key: everything that changes the cubin.
    public static func cacheKey(source: String, header: String, options: [String], nvrtcVersion: (Int, Int), arch: String) -> String {
        stableDigest([source, header, options.joined(separator: " "), "nvrtc \(nvrtcVersion.0).\(nvrtcVersion.1)", arch])
    }

    public struct Result {
        public let cubin: [UInt8]
        public let cached: Bool
        public let seconds: Double
        public let log: String
    }

    /// The cubin for `source`: from the cache when present, otherwise compiled and stored.
    public func cubin(for source: KernelSource, extraOptions: [String] = [], readCache: Bool = true, writeCache: Bool = true) throws -> Result {
        let opts = options(extra: extraOptions)
        let key = KernelCompiler.cacheKey(source: source.text, header: header, options: opts,
                                          nvrtcVersion: nvrtcVersion, arch: arch)
        let path = FileIO.join(cacheDirectory, "\(source.name)-\(arch)-\(key).cubin")
        let start = MonotonicClock.now()
        if readCache, FileIO.exists(path), let bytes = try? FileIO.read(path), !bytes.isEmpty {
            return Result(cubin: bytes, cached: true, seconds: MonotonicClock.now() - start, log: "")
        }
        let (bytes, log) = try compile(source, options: opts)
        if writeCache {
            try? CacheDirectory.makeDirectories(cacheDirectory)
            try? FileIO.write(bytes, to: path)
        }
        return Result(cubin: bytes, cached: false, seconds: MonotonicClock.now() - start, log: log)
    }

    /// Compiles without the cache; throws with NVRTC's log on failure.
    public func compile(_ source: KernelSource, options opts: [String]) throws -> (cubin: [UInt8], log: String) {
        var program: nvrtcProgram?
        let headerNames = [KernelSources.commonHeader]
        let headers = [header]
        try withCStrings(headers) { headerPointers in
            try withCStrings(headerNames) { namePointers in
                try checkNVRTC(kc_nvrtc.nvrtcCreateProgram!(&program, source.text, source.name + ".cu", Int32(headers.count),
                                                            headerPointers, namePointers), "nvrtcCreateProgram(\(source.name))")
            }
        }
        defer { _ = kc_nvrtc.nvrtcDestroyProgram!(&program) }
        let status = withCStrings(opts) { kc_nvrtc.nvrtcCompileProgram!(program, Int32(opts.count), $0) }
        var logSize = 0
        _ = kc_nvrtc.nvrtcGetProgramLogSize!(program, &logSize)
        var logBuffer = [CChar](repeating: 0, count: max(logSize, 1) + 1)
        _ = kc_nvrtc.nvrtcGetProgramLog!(program, &logBuffer)
        let log = String(cString: logBuffer)
        if status != 0 {
            let text = kc_nvrtc.nvrtcGetErrorString!(status).map { String(cString: $0) } ?? "NVRTC error"
            throw CUDAError(call: "nvrtcCompileProgram(\(source.name).cu, \(arch))", status: status, text: "\(text)\n\(log)")
        }
        var size = 0
        try checkNVRTC(kc_nvrtc.nvrtcGetCUBINSize!(program, &size), "nvrtcGetCUBINSize")
        var cubin = [UInt8](repeating: 0, count: size)
        try cubin.withUnsafeMutableBytes { raw in
            try checkNVRTC(kc_nvrtc.nvrtcGetCUBIN!(program, raw.baseAddress!.assumingMemoryBound(to: CChar.self)), "nvrtcGetCUBIN")
        }
        return (cubin, log)
    }
}

/// Calls `body` with a C array of C strings alive for the call.
func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) throws -> R) rethrows -> R {
    let pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    defer { pointers.forEach { free($0) } }
    let constant = pointers.map { UnsafePointer($0) }
    return try constant.withUnsafeBufferPointer { try body($0.baseAddress!) }
}

/// A loaded cubin and its functions.
public final class KernelModule: @unchecked Sendable {
    public let name: String
    let module: CUmodule
    private var functions: [String: CUfunction] = [:]

    public init(name: String, cubin: [UInt8]) throws {
        self.name = name
        var m: CUmodule?
        try cubin.withUnsafeBytes { try check(kc_cu.cuModuleLoadData!(&m, $0.baseAddress!), "cuModuleLoadData(\(name))") }
        module = m!
    }

    deinit { _ = kc_cu.cuModuleUnload?(module) }

    public func function(_ symbol: String) throws -> CUfunction {
        if let f = functions[symbol] { return f }
        var f: CUfunction?
        try check(kc_cu.cuModuleGetFunction!(&f, module, symbol), "cuModuleGetFunction(\(name).\(symbol))")
        functions[symbol] = f!
        return f!
    }
}

/// Kernel arguments packed for `cuLaunchKernel`: each value copied into its own aligned slot.
public struct KernelArguments {
    var storage: [UnsafeMutableRawPointer] = []

    public init() {}

    public mutating func add<T>(_ value: T) {
        let slot = UnsafeMutableRawPointer.allocate(byteCount: max(MemoryLayout<T>.size, 8), alignment: 16)
        slot.storeBytes(of: value, as: T.self)
        storage.append(slot)
    }

    func release() { storage.forEach { $0.deallocate() } }
}

/// Launches `function` with the given grid, block and arguments on `stream`.
public func launch(_ function: CUfunction, grid: (Int, Int, Int), block: (Int, Int, Int), sharedBytes: Int = 0,
                   stream: CUDAStream, name: String, _ arguments: KernelArguments) throws {
    defer { arguments.release() }
    var params: [UnsafeMutableRawPointer?] = arguments.storage
    try params.withUnsafeMutableBufferPointer { p in
        try check(kc_cu.cuLaunchKernel!(function, UInt32(grid.0), UInt32(grid.1), UInt32(grid.2),
                                        UInt32(block.0), UInt32(block.1), UInt32(block.2), UInt32(sharedBytes),
                                        stream.handle, p.baseAddress, nil),
                  "cuLaunchKernel(\(name), grid \(grid), block \(block))")
    }
}
