import CKilnCUDA
import KilnCore

/// Element type of a device tensor.
public enum DeviceType: Sendable {
    case bf16, fp8, f32
    public var size: Int { self == .fp8 ? 1 : self == .bf16 ? 2 : 4 }
}

/// A block of device memory from a `DevicePool`, returned to it when released.
public final class DeviceStorage: @unchecked Sendable {
    public let pointer: CUdeviceptr
    public let bytes: Int
    weak var pool: DevicePool?
    /// What a view keeps alive.
    let parent: DeviceStorage?
    /// Values computed from this block's contents (a gate's products with a layer's weight scales), keyed by what else
    /// they depend on. They live as long as the block (so eager runs and captures hold the same memory), except that
    /// `overwrite` drops those made outside captures; those made in one are written by its graph on every replay.
    var derived: [AnyHashable: DerivedValue] = [:]

    init(pointer: CUdeviceptr, bytes: Int, pool: DevicePool?) {
        (self.pointer, self.bytes, self.pool, self.parent) = (pointer, bytes, pool, nil)
    }

    /// `bytes` of `parent` from `offset` on (FP8 scale vectors of row slices, single scale slots).
    public init(viewOf parent: DeviceStorage, offset: Int, bytes: Int) {
        precondition(offset >= 0 && offset + bytes <= parent.bytes, "storage view \(offset)+\(bytes) of \(parent.bytes) bytes")
        (self.pointer, self.bytes, self.pool, self.parent) = (parent.pointer + CUdeviceptr(offset), bytes, nil, parent)
    }

    deinit { pool?.release(pointer, bytes) }
}

/// A value computed on the device from a block's contents (`DeviceStorage.derived`).
protocol DerivedValue: AnyObject {
    /// The capture it was made in (`DevicePool.captureSerial`), 0 for eager work.
    var captureSerial: Int { get }
}

/// A caching allocator over device memory: blocks are rounded to size classes and reused, so after the first pass
/// through a model (or a step) no further driver allocation happens: the memory a step needs is planned by its
/// first run. `poison` fills every handed-out block with NaNs (bf16 0xFFFF), for conformance tests.
public final class DevicePool: @unchecked Sendable {
    private var free: [Int: [CUdeviceptr]] = [:]
    private var owned: [DeviceBuffer] = []
    public private(set) var driverAllocations = 0
    public private(set) var reservedBytes = 0
    /// The most `reservedBytes` has been (a high-water mark; it leaves out the context, modules and cuBLASLt's workspace).
    public private(set) var peakReservedBytes = 0
    /// Changes whenever blocks leave the free lists for good (kept by a captured graph, or returned to the driver).
    public private(set) var generation = 0
    public var poison = false
    /// Where poison fills go: the backend's current stream, so a block's fill comes before the work it is handed to.
    var stream: CUDAStream

    init(stream: CUDAStream) { self.stream = stream }

    /// Size class: multiples of 512 bytes up to 1 MiB, of 2 MiB above.
    public static func sizeClass(_ bytes: Int) -> Int {
        let b = max(bytes, 1)
        return b <= 1 << 20 ? (b + 511) / 512 * 512 : (b + (2 << 20) - 1) / (2 << 20) * (2 << 20)
    }

    public func allocate(_ bytes: Int) throws -> DeviceStorage {
        let size = DevicePool.sizeClass(bytes)
        let pointer: CUdeviceptr
        if capturing, var list = captureFree[size], let p = list.popLast() {
            captureFree[size] = list
            pointer = p
        } else if var list = free[size], let p = list.popLast() {
            free[size] = list
            pointer = p
        } else {
            // Inside a capture only when the eager run before it did not size the pool (a caller still holds one of
            // its results): the graph then keeps a block of its own.
            let buffer = try capturing ? DeviceBuffer.duringCapture(bytes: size) : DeviceBuffer(bytes: size)
            owned.append(buffer)
            driverAllocations += 1
            if capturing { captureAllocations += 1 }
            reservedBytes += size
            peakReservedBytes = max(peakReservedBytes, reservedBytes)
            pointer = buffer.pointer
        }
        if poison { try DeviceCopy.fill16(pointer, value: 0xFFFF, count: size / 2, stream: stream) }
        return DeviceStorage(pointer: pointer, bytes: size, pool: self)
    }

    func release(_ pointer: CUdeviceptr, _ bytes: Int) {
        if deferred != nil {
            deferred!.append((pointer, bytes))
        } else if capturing {
            captureFree[bytes, default: []].append(pointer)
        } else {
            free[bytes, default: []].append(pointer)
        }
    }

    /// Gives every cached free block back to the driver (e.g. once the text encoders are gone), so later
    /// allocations of other sizes do not stack on top of them.
    func trim() {
        let unused = Set(free.values.joined())
        owned.removeAll { unused.contains($0.pointer) }
        reservedBytes -= free.reduce(0) { $0 + $1.key * $1.value.count }
        free = [:]
        generation += 1
    }

    // MARK: graph capture
    // Blocks freed while a graph is captured hold its intermediates: they are reused within the capture, then kept
    // for the graph (which rewrites them on every replay) until it is destroyed.
    private var capturing = false
    /// Whether a graph capture is under way (nothing may synchronize or be timed).
    public var isCapturing: Bool { capturing }
    private var captureFree: [Int: [CUdeviceptr]] = [:]

    /// Driver allocations made during captures (the pool had no free block of the size).
    public private(set) var captureAllocations = 0

    /// Numbers the captures: 0 outside one, else the capture under way (values derived during a capture belong to it).
    public private(set) var captureSerial = 0
    private var captures = 0

    func beginCapture() {
        capturing = true
        captureFree = [:]
        captures += 1
        captureSerial = captures
    }

    /// Ends a capture; returns the blocks the graph keeps.
    func endCapture() -> [Int: [CUdeviceptr]] {
        capturing = false
        captureSerial = 0
        generation += 1
        defer { captureFree = [:] }
        return captureFree
    }

    /// Returns a destroyed graph's blocks.
    func returnBlocks(_ blocks: [Int: [CUdeviceptr]]) {
        for (size, pointers) in blocks { free[size, default: []] += pointers }
    }

    // MARK: deferred reuse
    // While `CUDABackend.concurrently` may run work on two streams, a block freed by one stream's work could be handed
    // to the other while still being read: blocks freed then become reusable only once the streams have joined.
    private var deferred: [(pointer: CUdeviceptr, bytes: Int)]?
    /// Whether frees are being held back.
    var isDeferring: Bool { deferred != nil }

    func beginDeferring() {
        precondition(deferred == nil, "deferred reuse does not nest")
        deferred = []
    }

    /// Makes the blocks freed since `beginDeferring` reusable (call once the streams have joined).
    func endDeferring() {
        let blocks = deferred ?? []
        deferred = nil
        for block in blocks { release(block.pointer, block.bytes) }
    }
}

/// A tensor on the GPU: row-major, contiguous, BF16 for activations (FP8 with per-row fp32 scales for quantized
/// linear weights and activations).
public struct CUDATensor {
    public let storage: DeviceStorage
    public let offset: Int
    public let shape: [Int]
    public let type: DeviceType
    /// FP8: one fp32 scale per row (the last dimension is the row), or one for the whole tensor where
    /// `perTensorScale` (FP8 attention inputs).
    public let scales: DeviceStorage?
    public var perTensorScale = false

    public var pointer: CUdeviceptr { storage.pointer + CUdeviceptr(offset) }
    public var count: Int { shape.reduce(1, *) }
    public var bytes: Int { count * type.size }
}
