/// Encodes 8-bit RGB images as PNG.
///
/// The zlib stream uses stored (uncompressed) deflate blocks: always valid, simple, and fast;
/// files are about the size of the raw pixels.
public enum PNG {
    /// PNG bytes from the image data stream: each row its filter type byte (0) then its RGB bytes.
    public static func encode(filteredRows raw: ArraySlice<UInt8>, width: Int, height: Int) -> [UInt8] {
        precondition(width > 0 && height > 0 && raw.count == height * (1 + width * 3), "row bytes do not match \(width)x\(height)")
        var png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        var header: [UInt8] = []
        appendBigEndian(UInt32(width), to: &header)
        appendBigEndian(UInt32(height), to: &header)
        header += [8, 2, 0, 0, 0]  // 8 bits, RGB, deflate, adaptive filtering, no interlace
        appendChunk("IHDR", header, to: &png)
        appendChunk("IDAT", zlibStored(raw), to: &png)
        appendChunk("IEND", [], to: &png)
        return png
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


    static func zlibStored(_ data: ArraySlice<UInt8>) -> [UInt8] {
        var out: [UInt8] = [0x78, 0x01]
        out.reserveCapacity(data.count + 5 * (data.count / 65_535 + 1) + 6)
        var offset = 0
        repeat {
            let length = min(65_535, data.count - offset)
            let final: UInt8 = offset + length == data.count ? 1 : 0
            out.append(final)
            out += [UInt8(length & 0xFF), UInt8(length >> 8), UInt8(~length & 0xFF), UInt8((~length >> 8) & 0xFF)]
            out += data[(data.startIndex + offset)..<(data.startIndex + offset + length)]
            offset += length
        } while offset < data.count
        var adler = Adler32()
        data.withUnsafeBytes { adler.update($0) }
        appendBigEndian(adler.value, to: &out)
        return out
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

    /// CRC-32 as PNG chunks use it.
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { ~crc32Update(0xFFFF_FFFF, $0) }
    }

    static func appendChunk(_ type: String, _ body: [UInt8], to png: inout [UInt8]) {
        let name = Array(type.utf8)
        png.reserveCapacity(png.count + 12 + body.count)
        appendBigEndian(UInt32(body.count), to: &png)
        png += name
        png += body
        let crc = body.withUnsafeBytes { b in name.withUnsafeBytes { crc32Update(crc32Update(0xFFFF_FFFF, $0), b) } }
        appendBigEndian(~crc, to: &png)
    }

    static func appendBigEndian(_ value: UInt32, to bytes: inout [UInt8]) {
        bytes += [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
    }
}
