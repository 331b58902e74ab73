import CKilnCUDA
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// A failed call into a CUDA library: names the call, the status code and the library's own status string.
public struct CUDAError: Error, CustomStringConvertible {
    public let call: String
    public let status: Int32
    public let text: String
    public var description: String { "\(call) failed: \(text) (status \(status))" }
}

/// A CUDA library or GPU that is not there: one line saying what is missing and how to get it.
public struct CUDAUnavailable: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The NVIDIA libraries Kiln opens at run time.
public enum CUDALibrary: Int, CaseIterable, Sendable {
    case driver = 0, nvrtc = 1, cublasLt = 2, cudnn = 3

    public var label: String {
        switch self {
        case .driver: return "CUDA driver"
        case .nvrtc: return "NVRTC"
        case .cublasLt: return "cuBLASLt"
        case .cudnn: return "cuDNN"
        }
    }

    /// Opens the library (once) and returns the path of the file loaded; throws `CUDAUnavailable` with an install hint.
    @discardableResult
    public func load() throws -> String {
        var path = [CChar](repeating: 0, count: 1024)
        var message = [CChar](repeating: 0, count: 4096)
        let status = kc_load(kc_library_t(rawValue: UInt32(rawValue)), &path, path.count, &message, message.count)
        guard status == 0 else { throw CUDAUnavailable(String(cString: message)) }
        return String(cString: path)
    }

    /// The folders searched, in order.
    public static var searchFolders: [String] {
        var buffer = [CChar](repeating: 0, count: 16384)
        _ = kc_search_folders(&buffer, buffer.count)
        return String(cString: buffer).split(separator: "\n").map(String.init)
    }
}

// MARK: status checks

@inline(__always)
func check(_ status: CUresult, _ call: @autoclosure () -> String) throws {
    if status != 0 { throw driverError(status, call()) }
}

func driverError(_ status: CUresult, _ call: String) -> CUDAError {
    var name: UnsafePointer<CChar>?
    var text: UnsafePointer<CChar>?
    _ = kc_cu.cuGetErrorName?(status, &name)
    _ = kc_cu.cuGetErrorString?(status, &text)
    let n = name.map { String(cString: $0) } ?? "CUDA error"
    let t = text.map { String(cString: $0) } ?? ""
    return CUDAError(call: call, status: status, text: t.isEmpty ? n : "\(n): \(t)")
}

@inline(__always)
func checkNVRTC(_ status: nvrtcResult, _ call: @autoclosure () -> String) throws {
    if status != 0 {
        let text = kc_nvrtc.nvrtcGetErrorString.flatMap { $0(status) }.map { String(cString: $0) } ?? "NVRTC error"
        throw CUDAError(call: call(), status: status, text: text)
    }
}

@inline(__always)
func checkLt(_ status: cublasStatus_t, _ call: @autoclosure () -> String) throws {
    if status != 0 {
        let text = kc_lt.cublasLtGetStatusString.flatMap { $0(status) }.map { String(cString: $0) } ?? "cuBLAS error"
        throw CUDAError(call: call(), status: status, text: text)
    }
}

// MARK: device

/// One GPU with its primary context made current on the calling thread.
public final class CUDADevice: @unchecked Sendable {
    public let ordinal: Int
    public let handle: CUdevice
    public let context: CUcontext
    public let name: String
    public let computeCapability: (major: Int, minor: Int)
    public let multiprocessors: Int
    public let l2Bytes: Int
    public let totalMemory: Int
    public let maxSharedPerBlock: Int
    public let driverVersion: Int
    public let driverPath: String

    /// Opens GPU `ordinal`: loads the driver, initializes it, retains the primary context.
    public init(ordinal: Int = 0) throws {
        driverPath = try CUDALibrary.driver.load()
        let initStatus = kc_cu.cuInit!(0)
        if initStatus == 100 /* CUDA_ERROR_NO_DEVICE */ {
            throw CUDAUnavailable("no NVIDIA GPU found (the CUDA driver at \(driverPath) reports none); run on a machine with an NVIDIA GPU")
        }
        try check(initStatus, "cuInit")
        var count: Int32 = 0
        try check(kc_cu.cuDeviceGetCount!(&count), "cuDeviceGetCount")
        guard count > 0 else { throw CUDAUnavailable("no NVIDIA GPU found; run on a machine with an NVIDIA GPU") }
        guard ordinal < count else { throw CUDAUnavailable("GPU \(ordinal) requested, \(count) present") }
        self.ordinal = ordinal
        var device: CUdevice = 0
        try check(kc_cu.cuDeviceGet!(&device, Int32(ordinal)), "cuDeviceGet")
        handle = device
        var version: Int32 = 0
        try check(kc_cu.cuDriverGetVersion!(&version), "cuDriverGetVersion")
        driverVersion = Int(version)
        var buffer = [CChar](repeating: 0, count: 256)
        try check(kc_cu.cuDeviceGetName!(&buffer, Int32(buffer.count), device), "cuDeviceGetName")
        name = String(cString: buffer)
        func attribute(_ a: Int32) throws -> Int {
            var v: Int32 = 0
            try check(kc_cu.cuDeviceGetAttribute!(&v, a, device), "cuDeviceGetAttribute(\(a))")
            return Int(v)
        }
        computeCapability = (try attribute(Int32(KC_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)),
                             try attribute(Int32(KC_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)))
        multiprocessors = try attribute(Int32(KC_CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT))
        l2Bytes = try attribute(Int32(KC_CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE))
        maxSharedPerBlock = try attribute(Int32(KC_CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN))
        var total = 0
        try check(kc_cu.cuDeviceTotalMem!(&total, device), "cuDeviceTotalMem")
        totalMemory = total
        var context: CUcontext?
        try check(kc_cu.cuDevicePrimaryCtxRetain!(&context, device), "cuDevicePrimaryCtxRetain")
        self.context = context!
        try check(kc_cu.cuCtxSetCurrent!(context), "cuCtxSetCurrent")
    }

    /// The NVRTC target for this GPU: `sm_90a` on Hopper (wgmma and friends), `sm_XY` elsewhere.
    public var arch: String { KernelCompiler.arch(major: computeCapability.major, minor: computeCapability.minor) }

    /// Makes this device's context current on the calling thread.
    public func makeCurrent() throws { try check(kc_cu.cuCtxSetCurrent!(context), "cuCtxSetCurrent") }

    public func synchronize() throws { try check(kc_cu.cuCtxSynchronize!(), "cuCtxSynchronize") }

    /// Free and total device memory in bytes.
    public func memoryInfo() throws -> (free: Int, total: Int) {
        var free = 0, total = 0
        try check(kc_cu.cuMemGetInfo!(&free, &total), "cuMemGetInfo")
        return (free, total)
    }

    /// A file-name-safe identity for per-GPU caches.
    public var cacheTag: String {
        let slug = name.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "-" }
        return String(slug) + "-\(arch)"
    }
}

/// A non-blocking stream.
public final class CUDAStream: @unchecked Sendable {
    public let handle: CUstream

    public init() throws {
        var s: CUstream?
        try check(kc_cu.cuStreamCreate!(&s, UInt32(KC_CU_STREAM_NON_BLOCKING)), "cuStreamCreate")
        handle = s!
    }

    deinit { _ = kc_cu.cuStreamDestroy?(handle) }

    public func synchronize() throws { try check(kc_cu.cuStreamSynchronize!(handle), "cuStreamSynchronize") }

    /// Makes work enqueued on this stream from now on wait for `event`'s last recording (on any stream). Under stream
    /// capture this is how another stream forks off the capturing one and joins it again.
    public func wait(for event: CUDAEvent) throws {
        try check(kc_cu.cuStreamWaitEvent!(handle, event.handle, 0), "cuStreamWaitEvent")
    }
}

/// An event for ordering and timing.
public final class CUDAEvent: @unchecked Sendable {
    public let handle: CUevent

    /// `timing: false` makes an event for ordering only, which records and waits faster.
    public init(timing: Bool = true) throws {
        var e: CUevent?
        try check(kc_cu.cuEventCreate!(&e, UInt32(timing ? KC_CU_EVENT_DEFAULT : KC_CU_EVENT_DISABLE_TIMING)), "cuEventCreate")
        handle = e!
    }

    deinit { _ = kc_cu.cuEventDestroy?(handle) }

    public func record(_ stream: CUDAStream) throws { try check(kc_cu.cuEventRecord!(handle, stream.handle), "cuEventRecord") }
    public func synchronize() throws { try check(kc_cu.cuEventSynchronize!(handle), "cuEventSynchronize") }

    /// Milliseconds from `start` to this event (both recorded, this one completed).
    public func milliseconds(since start: CUDAEvent) throws -> Float {
        var ms: Float = 0
        try check(kc_cu.cuEventElapsedTime!(&ms, start.handle, handle), "cuEventElapsedTime")
        return ms
    }
}

/// One device allocation, freed when released.
public final class DeviceBuffer: @unchecked Sendable {
    public let pointer: CUdeviceptr
    public let bytes: Int

    public init(bytes: Int) throws {
        var p: CUdeviceptr = 0
        try check(kc_cu.cuMemAlloc!(&p, max(bytes, 1)), "cuMemAlloc(\(bytes) bytes)")
        pointer = p
        self.bytes = bytes
    }

    /// A buffer allocated while this thread captures a stream. The driver refuses `cuMemAlloc` there unless the
    /// thread's capture mode is relaxed for the call; the allocation itself is not part of the graph, and the pool
    /// keeps the block as long as the graph (or the tensor holding it) needs it.
    static func duringCapture(bytes: Int) throws -> DeviceBuffer {
        var mode = Int32(KC_CU_STREAM_CAPTURE_MODE_RELAXED)
        try check(kc_cu.cuThreadExchangeStreamCaptureMode!(&mode), "cuThreadExchangeStreamCaptureMode")
        defer { _ = kc_cu.cuThreadExchangeStreamCaptureMode!(&mode) }
        return try DeviceBuffer(bytes: bytes)
    }

    deinit { _ = kc_cu.cuMemFree?(pointer) }
}

/// A planned region of device memory handed out by bumping an offset: allocate everything a step needs up front,
/// `reset` to a mark between uses. Nothing is allocated from the driver after creation.
public final class DeviceArena: @unchecked Sendable {
    public let buffer: DeviceBuffer
    public private(set) var offset = 0
    public private(set) var highWater = 0
    public static let alignment = 256

    public init(bytes: Int) throws { buffer = try DeviceBuffer(bytes: bytes) }

    public var capacity: Int { buffer.bytes }

    /// Rounds `bytes` up to the arena's alignment.
    public static func aligned(_ bytes: Int) -> Int { (bytes + alignment - 1) / alignment * alignment }

    public func allocate(_ bytes: Int) throws -> CUdeviceptr {
        let size = DeviceArena.aligned(max(bytes, 1))
        guard offset + size <= capacity else {
            throw KilnError.invalidArgument("device arena of \(capacity) bytes exhausted (\(offset) used, \(size) asked)")
        }
        defer { offset += size; highWater = max(highWater, offset) }
        return buffer.pointer + CUdeviceptr(offset)
    }

    /// Everything allocated after `mark` is released.
    public func reset(to mark: Int = 0) { offset = mark }
}

/// Page-locked host memory for fast, asynchronous copies.
public final class PinnedBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let bytes: Int

    public init(bytes: Int) throws {
        var p: UnsafeMutableRawPointer?
        try check(kc_cu.cuMemHostAlloc!(&p, max(bytes, 1), UInt32(KC_CU_MEMHOSTALLOC_PORTABLE)), "cuMemHostAlloc(\(bytes) bytes)")
        pointer = p!
        self.bytes = bytes
    }

    deinit { _ = kc_cu.cuMemFreeHost?(pointer) }
}

/// Copies and fills on a stream.
public enum DeviceCopy {
    public static func upload(_ source: UnsafeRawPointer, to destination: CUdeviceptr, bytes: Int, stream: CUDAStream) throws {
        try check(kc_cu.cuMemcpyHtoDAsync!(destination, source, bytes, stream.handle), "cuMemcpyHtoDAsync(\(bytes) bytes)")
    }

    public static func download(_ source: CUdeviceptr, to destination: UnsafeMutableRawPointer, bytes: Int, stream: CUDAStream) throws {
        try check(kc_cu.cuMemcpyDtoHAsync!(destination, source, bytes, stream.handle), "cuMemcpyDtoHAsync(\(bytes) bytes)")
    }

    public static func copy(_ source: CUdeviceptr, to destination: CUdeviceptr, bytes: Int, stream: CUDAStream) throws {
        try check(kc_cu.cuMemcpyDtoDAsync!(destination, source, bytes, stream.handle), "cuMemcpyDtoDAsync(\(bytes) bytes)")
    }

    public static func fill16(_ destination: CUdeviceptr, value: UInt16, count: Int, stream: CUDAStream) throws {
        try check(kc_cu.cuMemsetD16Async!(destination, value, count, stream.handle), "cuMemsetD16Async")
    }

    public static func fill8(_ destination: CUdeviceptr, value: UInt8, count: Int, stream: CUDAStream) throws {
        try check(kc_cu.cuMemsetD8Async!(destination, value, count, stream.handle), "cuMemsetD8Async")
    }
}

/// A CUDA graph captured from a stream: everything `body` enqueues on the stream is recorded once, then replayed with
/// one launch. Inputs are updated by writing new values into the captured buffers before `launch` (the addresses
/// are part of the graph).
public final class CUDAGraph: @unchecked Sendable {
    let exec: CUgraphExec
    let graph: CUgraph

    public init(capturing stream: CUDAStream, _ body: () throws -> Void) throws {
        try check(kc_cu.cuStreamBeginCapture!(stream.handle, Int32(KC_CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)), "cuStreamBeginCapture")
        var bodyError: Error?
        do { try body() } catch { bodyError = error }
        var g: CUgraph?
        let endStatus = kc_cu.cuStreamEndCapture!(stream.handle, &g)
        if let bodyError {
            if let g { _ = kc_cu.cuGraphDestroy!(g) }
            throw bodyError
        }
        try check(endStatus, "cuStreamEndCapture")
        graph = g!
        var e: CUgraphExec?
        do {
            try check(kc_cu.cuGraphInstantiateWithFlags!(&e, graph, 0), "cuGraphInstantiateWithFlags")
        } catch {
            _ = kc_cu.cuGraphDestroy!(graph)
            throw error
        }
        exec = e!
    }

    deinit {
        _ = kc_cu.cuGraphExecDestroy?(exec)
        _ = kc_cu.cuGraphDestroy?(graph)
    }

    public func launch(on stream: CUDAStream) throws { try check(kc_cu.cuGraphLaunch!(exec, stream.handle), "cuGraphLaunch") }
}
