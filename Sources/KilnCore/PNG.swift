/// Encodes 8-bit RGB images as PNG.
///
/// The zlib stream uses stored (uncompressed) deflate blocks: always valid, simple, and fast;
/// files are about the size of the raw pixels.
public enum PNG {
    /// PNG bytes of an 8-bit RGB image given as `height × width × 3` bytes, row-major.
    public static func encode(rgb pixels: [UInt8], width: Int, height: Int) -> [UInt8] {
        precondition(width > 0 && height > 0 && pixels.count == width * height * 3, "pixel count does not match \(width)x\(height)")
        var raw: [UInt8] = []
        raw.reserveCapacity(height * (1 + width * 3))
        for row in 0..<height {
            raw.append(0)  // filter type None
            raw += pixels[(row * width * 3)..<((row + 1) * width * 3)]
        }
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

    /// Converts a `[1, 3, H, W]` (or `[3, H, W]`) tensor in [0, 1] to PNG bytes; values are clamped and rounded
    /// as diffusers does (`round(x * 255)`); non-finite values become 0 (see `nonFiniteCount`).
    public static func encode(image: HostTensor) -> [UInt8] {
        let shape = image.shape.count == 4 ? Array(image.shape.dropFirst()) : image.shape
        precondition(shape.count == 3 && shape[0] == 3, "expected a [1, 3, H, W] image, got \(image.shape)")
        let (height, width) = (shape[1], shape[2])
        var pixels = [UInt8](repeating: 0, count: height * width * 3)
        image.data.withUnsafeBufferPointer { planes in
            pixels.withUnsafeMutableBufferPointer { rgb in
                for c in 0..<3 {
                    for i in 0..<(height * width) {
                        let raw = planes[c * height * width + i]
                        let value = raw.isFinite ? min(max(raw, 0), 1) : 0
                        rgb[i * 3 + c] = UInt8((value * 255).rounded(.toNearestOrEven))
                    }
                }
            }
        }
        return encode(rgb: pixels, width: width, height: height)
    }

    /// How many values of a tensor are NaN or infinite (they are written as black).
    public static func nonFiniteCount(_ image: HostTensor) -> Int { image.data.reduce(0) { $0 + ($1.isFinite ? 0 : 1) } }

    static func zlibStored(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x78, 0x01]
        var offset = 0
        repeat {
            let length = min(65_535, data.count - offset)
            let final: UInt8 = offset + length == data.count ? 1 : 0
            out.append(final)
            out += [UInt8(length & 0xFF), UInt8(length >> 8), UInt8(~length & 0xFF), UInt8((~length >> 8) & 0xFF)]
            out += data[offset..<(offset + length)]
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

    static let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// CRC-32 as PNG chunks use it.
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        crcTable.withUnsafeBufferPointer { table in
            bytes.withUnsafeBufferPointer { data in
                for byte in data { c = table[Int((c ^ UInt32(byte)) & 0xFF)] ^ (c >> 8) }
            }
        }
        return c ^ 0xFFFF_FFFF
    }

    static func appendChunk(_ type: String, _ body: [UInt8], to png: inout [UInt8]) {
        appendBigEndian(UInt32(body.count), to: &png)
        let typed = Array(type.utf8) + body
        png += typed
        appendBigEndian(crc32(typed), to: &png)
    }

    static func appendBigEndian(_ value: UInt32, to bytes: inout [UInt8]) {
        bytes += [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
    }
}
