import CKilnCUDA
import Dispatch
import KilnCore

/// Host fp32 values to device BF16 through page-locked memory: each chunk is converted on several threads into one half
/// of the buffer while the other half's copy runs. A fresh host array per upload costs page faults and the driver's
/// bounce through its own pageable staging (FLUX.1-dev's per-image setup on the H100: 5.9 ms before, 4.1 ms after).
final class HostStaging {
    /// BF16 elements per half: 8 MB.
    static let chunk = 1 << 22
    private var buffer: PinnedBuffer?
    /// Recorded after each half's latest copy.
    private var copied: [CUDAEvent] = []

    /// Writes `values` as BF16 to `destination` and waits for the copy.
    func uploadBF16(_ values: [Float], to destination: CUdeviceptr, stream: CUDAStream) throws {
        if buffer == nil {
            buffer = try PinnedBuffer(bytes: 4 * HostStaging.chunk)
            copied = try [CUDAEvent(timing: false), CUDAEvent(timing: false)]
        }
        let base = UInt(bitPattern: buffer!.pointer)
        try values.withUnsafeBufferPointer { source in
            let from = UInt(bitPattern: source.baseAddress)
            var start = 0, half = 0
            while start < source.count {
                let count = min(HostStaging.chunk, source.count - start)
                // This half's copy from two chunks ago must be done before it is overwritten (the other half's may run on).
                if start >= 2 * HostStaging.chunk { try copied[half].synchronize() }
                let out = base + UInt(half * HostStaging.chunk * 2)
                let parts = min(8, max(1, count / 65536))
                let size = (count + parts - 1) / parts
                let first = start
                DispatchQueue.concurrentPerform(iterations: parts) { part in
                    let input = UnsafePointer<Float>(bitPattern: from)! + first
                    let output = UnsafeMutablePointer<UInt16>(bitPattern: out)!
                    for i in (part * size)..<min(count, (part + 1) * size) { output[i] = NumberFormats.floatToBF16(input[i]) }
                }
                try DeviceCopy.upload(UnsafeRawPointer(bitPattern: out)!, to: destination + CUdeviceptr(start * 2), bytes: count * 2, stream: stream)
                try copied[half].record(stream)
                start += count
                half ^= 1
            }
        }
        try stream.synchronize()
    }
}
