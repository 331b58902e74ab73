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
        // Adler-32, reduced every 5552 bytes (the most that cannot overflow 32 bits).
        var a: UInt32 = 1
        var b: UInt32 = 0
        data.withUnsafeBufferPointer { bytes in
            var start = 0
            while start < bytes.count {
                let end = min(start + 5552, bytes.count)
                for i in start..<end {
                    a &+= UInt32(bytes[i])
                    b &+= a
                }
                a %= 65_521
                b %= 65_521
                start = end
            }
        }
        appendBigEndian((b << 16) | a, to: &out)
        return out
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

    /// Continues a CRC-32 register (before the final inversion) over `data`.
    static func crc32Update(_ crc: UInt32, _ data: UnsafeRawBufferPointer) -> UInt32 {
        var c = crc
        crcTables.withUnsafeBufferPointer { t in
            var i = 0
            while i + 8 <= data.count {
                let one = UInt32(littleEndian: data.loadUnaligned(fromByteOffset: i, as: UInt32.self)) ^ c
                let two = UInt32(littleEndian: data.loadUnaligned(fromByteOffset: i + 4, as: UInt32.self))
                c = t[7 * 256 + Int(one & 0xFF)] ^ t[6 * 256 + Int((one >> 8) & 0xFF)] ^ t[5 * 256 + Int((one >> 16) & 0xFF)]
                    ^ t[4 * 256 + Int(one >> 24)] ^ t[3 * 256 + Int(two & 0xFF)] ^ t[2 * 256 + Int((two >> 8) & 0xFF)]
                    ^ t[256 + Int((two >> 16) & 0xFF)] ^ t[Int(two >> 24)]
                i += 8
            }
            while i < data.count {
                c = t[Int((c ^ UInt32(data[i])) & 0xFF)] ^ (c >> 8)
                i += 1
            }
        }
        return c
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
