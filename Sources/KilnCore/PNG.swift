import Dispatch

/// Encodes 8-bit RGB images as PNG.
///
/// The zlib stream uses stored (uncompressed) deflate blocks: always valid, simple, and fast;
/// files are about the size of the raw pixels.
public enum PNG {
    /// PNG bytes from the image data stream: each row its filter type byte (0) then its RGB bytes.
    public static func encode(filteredRows raw: ArraySlice<UInt8>, width: Int, height: Int) -> [UInt8] {
        precondition(width > 0 && height > 0 && raw.count == height * (1 + width * 3), "row bytes do not match \(width)x\(height)")
        var head: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        var header: [UInt8] = []
        appendBigEndian(UInt32(width), to: &header)
        appendBigEndian(UInt32(height), to: &header)
        header += [8, 2, 0, 0, 0]  // 8 bits, RGB, deflate, adaptive filtering, no interlace
        appendChunk("IHDR", header, to: &head)
        // The IDAT chunk's stream is written in place, straight into the result, so the pixels are copied once.
        let streamLength = zlibStoredLength(raw.count)
        appendBigEndian(UInt32(streamLength), to: &head)
        head += Array("IDAT".utf8)
        var end: [UInt8] = []
        appendChunk("IEND", [], to: &end)
        let total = head.count + streamLength + 4 + end.count
        return [UInt8](unsafeUninitializedCapacity: total) { buffer, count in
            let png = UnsafeMutableRawBufferPointer(buffer)
            png.copyBytes(from: head)
            let stream = UnsafeMutableRawBufferPointer(rebasing: png[head.count..<(head.count + streamLength)])
            let streamCRC = raw.withUnsafeBytes { writeZlibStored($0, to: stream) }
            let typeCRC = crc32Update(0xFFFF_FFFF, UnsafeRawBufferPointer(rebasing: png[(head.count - 4)..<head.count]))
            storeBigEndian(~crc32Combine(typeCRC, streamCRC, count: streamLength), at: head.count + streamLength, in: png)
            UnsafeMutableRawBufferPointer(rebasing: png[(total - end.count)...]).copyBytes(from: end)
            count = total
        }
    }

    /// The 8-bit value of a sample in [0, 1]: clamped, times 255, rounded half to even as diffusers does
    /// (`round(x * 255)`); non-finite values become 0. Adding and removing 1.5·2^23 rounds in one add, where
    /// `rounded(.toNearestOrEven)` is a libm call per value on baseline x86-64.
    @inline(__always)
    public static func byte(_ value: Float) -> UInt8 {
        let clamped = value.isFinite ? min(max(value, 0), 1) : 0
        let magic: Float = 12_582_912
        return UInt8((clamped * 255 + magic) - magic)
    }

    /// Converts a `[1, 3, H, W]` (or `[3, H, W]`) tensor in [0, 1] to PNG bytes (samples as `byte` makes them).
    public static func encode(image: HostTensor) -> [UInt8] {
        let shape = image.shape.count == 4 ? Array(image.shape.dropFirst()) : image.shape
        precondition(shape.count == 3 && shape[0] == 3, "expected a [1, 3, H, W] image, got \(image.shape)")
        let (height, width) = (shape[1], shape[2])
        let plane = height * width
        let raw = [UInt8](unsafeUninitializedCapacity: height * (1 + width * 3)) { rows, count in
            image.data.withUnsafeBufferPointer { planes in
                for y in 0..<height {
                    let start = y * (1 + width * 3)
                    rows[start] = 0  // filter type None
                    for x in 0..<width {
                        for c in 0..<3 { rows[start + 1 + x * 3 + c] = byte(planes[c * plane + y * width + x]) }
                    }
                }
            }
            count = height * (1 + width * 3)
        }
        return encode(filteredRows: raw[...], width: width, height: height)
    }

    /// Data bytes in a full stored deflate block (its 16-bit length field's maximum).
    static let storedBlockSize = 65_535

    /// Stored blocks a part of the stream has: parts are copied and checksummed concurrently (about 256 KiB each, to
    /// spread a megapixel image over many cores while a part stays in a core's cache).
    static let blocksPerPart = 4

    /// Bytes of the zlib stream for `count` data bytes: the 2-byte header, one stored block per 65,535 bytes (at least
    /// one) with a 5-byte header each, and the Adler-32.
    static func zlibStoredLength(_ count: Int) -> Int {
        2 + 5 * storedBlockCount(count) + count + 4
    }

    /// Stored blocks for `count` data bytes: an empty stream still has one, the final block.
    static func storedBlockCount(_ count: Int) -> Int {
        max(1, (count + storedBlockSize - 1) / storedBlockSize)
    }

    /// Writes `data` as a zlib stream of stored deflate blocks into `stream` (`zlibStoredLength(data.count)` bytes) and
    /// returns the CRC-32 register, started from zero, over the bytes written: the chunk's CRC joins it on.
    static func writeZlibStored(_ data: UnsafeRawBufferPointer, to stream: UnsafeMutableRawBufferPointer) -> UInt32 {
        precondition(stream.count == zlibStoredLength(data.count), "stream size does not match the data")
        stream[0] = 0x78  // deflate, 32 KiB window
        stream[1] = 0x01  // no dictionary, fastest-compression level; 0x7801 is a multiple of 31
        let blocks = storedBlockCount(data.count)
        let partCount = (blocks + blocksPerPart - 1) / blocksPerPart
        let parts = (0..<partCount).map { StreamPart($0, blockCount: blocks, dataCount: data.count) }
        // Each part's checksums over its own bytes, started from zero, joined in order below.
        var partSums = [(crc: UInt32, adler: Adler32)](repeating: (0, Adler32(a: 0, b: 0)), count: parts.count)
        partSums.withUnsafeMutableBufferPointer { sums in
            DispatchQueue.concurrentPerform(iterations: parts.count) { index in
                let part = parts[index]
                for block in part.blocks {
                    let start = block * storedBlockSize
                    let length = min(storedBlockSize, data.count - start)
                    let at = 2 + block * (5 + storedBlockSize)
                    stream[at] = block == blocks - 1 ? 1 : 0  // BFINAL on the last; BTYPE 00, stored
                    storeLittleEndian(UInt16(length), at: at + 1, in: stream)
                    storeLittleEndian(~UInt16(length), at: at + 3, in: stream)
                    UnsafeMutableRawBufferPointer(rebasing: stream[(at + 5)..<(at + 5 + length)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: data[start..<(start + length)]))
                }
                var adler = Adler32(a: 0, b: 0)
                adler.update(UnsafeRawBufferPointer(rebasing: data[part.data]))
                sums[index] = (crc32Update(0, UnsafeRawBufferPointer(rebasing: stream[part.stream])), adler)
            }
        }
        var crc = crc32Update(0, UnsafeRawBufferPointer(rebasing: stream[0..<2]))
        var adler = Adler32()
        for (part, partSum) in zip(parts, partSums) {
            crc = crc32Combine(crc, partSum.crc, count: part.stream.count)
            adler.combine(partSum.adler, count: part.data.count)
        }
        storeBigEndian(adler.value, at: stream.count - 4, in: stream)
        return crc32Update(crc, UnsafeRawBufferPointer(rebasing: stream[(stream.count - 4)...]))
    }

    /// A run of stored blocks that one worker writes and checksums: the blocks, the data bytes in them, and the stream
    /// bytes it writes (block headers and data).
    struct StreamPart {
        var blocks: Range<Int>
        var data: Range<Int>
        var stream: Range<Int>

        init(_ index: Int, blockCount: Int, dataCount: Int) {
            blocks = (index * blocksPerPart)..<min(blockCount, (index + 1) * blocksPerPart)
            data = min(dataCount, blocks.lowerBound * storedBlockSize)..<min(dataCount, blocks.upperBound * storedBlockSize)
            stream = (2 + 5 * blocks.lowerBound + data.lowerBound)..<(2 + 5 * blocks.upperBound + data.upperBound)
        }
    }

    /// Adler-32's two running sums, each modulo 65,521.
    struct Adler32 {
        static let modulus: UInt32 = 65_521
        /// The sum of the bytes, plus 1 for a whole stream.
        var a: UInt32 = 1
        /// The sum of `a` after each byte.
        var b: UInt32 = 0

        var value: UInt32 { b << 16 | a }

        /// Takes in `data`, 16 bytes a row: each byte column sums into a SIMD lane, for runs of up to 5552 bytes (347
        /// rows, the most whose lane sums below cannot overflow 32 bits), and each run joins on with `combine`.
        mutating func update(_ data: UnsafeRawBufferPointer) {
            let column = SIMD16<UInt32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
            var start = 0
            while data.count - start >= 16 {
                let rows = min((data.count - start) / 16, 347)
                // `sums` adds up each column's bytes; `weighted` adds `sums` after every row, so it counts the byte of
                // row r (rows - r) times.
                var sums = SIMD16<UInt32>(), weighted = SIMD16<UInt32>()
                for row in 0..<rows {
                    let bytes = data.loadUnaligned(fromByteOffset: start + 16 * row, as: SIMD16<UInt8>.self)
                    sums &+= SIMD16(truncatingIfNeeded: bytes)
                    weighted &+= sums
                }
                // b counts the byte at p = 16r + j of the run (n - p) = 16(rows - r) - j times; each lane is at most
                // 16 · 255 · 347 · 348 / 2, and their total stays under 2^32.
                let runB = (16 &* weighted &- column &* sums).wrappedSum()
                combine(Adler32(a: sums.wrappedSum() % Self.modulus, b: runB % Self.modulus), count: 16 * rows)
                start += 16 * rows
            }
            for byte in data[start...] {
                a = (a + UInt32(byte)) % Self.modulus
                b = (b + a) % Self.modulus
            }
        }

        /// Takes in `count` bytes whose own sums, started from zero, are `run`: each of a's `count` steps adds the old
        /// a to b.
        mutating func combine(_ run: Adler32, count: Int) {
            let modulus = UInt64(Self.modulus)
            b = UInt32((UInt64(b) + UInt64(count) % modulus * UInt64(a) + UInt64(run.b)) % modulus)
            a = (a + run.a) % Self.modulus
        }
    }

    /// CRC-32 tables for eight bytes at a time ("slicing by 8"): table k maps a byte k positions from the end.
    static let crcTables: [UInt32] = {
        var t = [UInt32](repeating: 0, count: 8 * 256)
        for n in 0..<256 {
            var c = UInt32(n)
            for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
            t[n] = c
        }
        for k in 1..<8 {
            for n in 0..<256 { t[k * 256 + n] = (t[(k - 1) * 256 + n] >> 8) ^ t[Int(t[(k - 1) * 256 + n] & 0xFF)] }
        }
        return t
    }()

    /// Continues a CRC-32 register (before the final inversion) over `data`. One register's table lookups wait on each
    /// other, so four run side by side over the data's quarters and are joined after.
    static func crc32Update(_ crc: UInt32, _ data: UnsafeRawBufferPointer) -> UInt32 {
        crcTables.withUnsafeBufferPointer { t in
            // The register xor the next 8 bytes, each byte looked up in the table for its distance from the end.
            @inline(__always) func step(_ crc: UInt32, at offset: Int) -> UInt32 {
                let word = UInt64(littleEndian: data.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) ^ UInt64(crc)
                var next: UInt32 = 0
                for k in 0..<8 { next ^= t[(7 - k) * 256 + Int(truncatingIfNeeded: word >> UInt64(8 * k)) & 0xFF] }
                return next
            }
            let quarter = data.count / 32 * 8
            var (c0, c1, c2, c3) = (crc, UInt32(0), UInt32(0), UInt32(0))
            for offset in stride(from: 0, to: quarter, by: 8) {
                c0 = step(c0, at: offset)
                c1 = step(c1, at: quarter + offset)
                c2 = step(c2, at: 2 * quarter + offset)
                c3 = step(c3, at: 3 * quarter + offset)
            }
            let shift = crc32Shift(bytes: quarter)
            var c = multiplyModP(shift, multiplyModP(shift, multiplyModP(shift, c0) ^ c1) ^ c2) ^ c3
            for byte in data[(4 * quarter)...] { c = t[Int((c ^ UInt32(byte)) & 0xFF)] ^ (c >> 8) }
            return c
        }
    }

    /// The CRC-32 register over a run of bytes then `count` more, from the register over the first (`crc`) and the one
    /// over the rest started from zero (`next`): the register is linear, so the first runs on over `count` zero bytes.
    static func crc32Combine(_ crc: UInt32, _ next: UInt32, count: Int) -> UInt32 {
        multiplyModP(crc32Shift(bytes: count), crc) ^ next
    }

    /// x^(8 · bytes) modulo the CRC-32 polynomial: multiplying a register by it runs the register over that many zero
    /// bytes.
    static func crc32Shift(bytes: Int) -> UInt32 {
        var shift: UInt32 = 0x8000_0000  // 1, bit-reflected as registers are
        var remaining = bytes
        var power = 0
        while remaining != 0 {
            if remaining & 1 != 0 { shift = multiplyModP(crc32ShiftPowers[power], shift) }
            remaining >>= 1
            power += 1
        }
        return shift
    }

    /// x^(8 · 2^k) modulo the CRC-32 polynomial for k in 0..<64, so a shift takes one product per set bit of its length.
    static let crc32ShiftPowers: [UInt32] = {
        var powers: [UInt32] = [0x0080_0000]  // x^8
        for _ in 1..<64 { powers.append(multiplyModP(powers[powers.count - 1], powers[powers.count - 1])) }
        return powers
    }()

    /// a · b modulo the CRC-32 polynomial, both bit-reflected (x^0 the top bit).
    static func multiplyModP(_ a: UInt32, _ b: UInt32) -> UInt32 {
        var (a, b, product) = (a, b, UInt32(0))
        // Masks, not branches: the bits are random, so branches on them would mispredict half the time.
        for _ in 0..<32 {
            product ^= b & (0 &- (a >> 31))
            a <<= 1
            b = (b >> 1) ^ (0xEDB8_8320 & (0 &- (b & 1)))
        }
        return product
    }

    static func appendChunk(_ type: String, _ body: [UInt8], to png: inout [UInt8]) {
        let name = Array(type.utf8)
        appendBigEndian(UInt32(body.count), to: &png)
        png += name
        png += body
        let crc = body.withUnsafeBytes { b in name.withUnsafeBytes { crc32Update(crc32Update(0xFFFF_FFFF, $0), b) } }
        appendBigEndian(~crc, to: &png)
    }

    static func appendBigEndian(_ value: UInt32, to bytes: inout [UInt8]) {
        bytes += [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
    }

    static func storeBigEndian(_ value: UInt32, at offset: Int, in bytes: UnsafeMutableRawBufferPointer) {
        bytes.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt32.self)
    }

    static func storeLittleEndian(_ value: UInt16, at offset: Int, in bytes: UnsafeMutableRawBufferPointer) {
        bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt16.self)
    }
}
