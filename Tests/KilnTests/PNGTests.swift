@testable import KilnCore
import XCTest

/// The PNG writer's checksums against zlib's published values and byte-at-a-time references, a stream split into stored
/// blocks, and its files against a straightforward reference encoder, byte for byte.
final class PNGTests: XCTestCase {
    func crc32(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { ~PNG.crc32Update(0xFFFF_FFFF, $0) }
    }

    func adler(ofStream stream: [UInt8]) -> UInt32 {
        stream.suffix(4).reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// Where two byte strings first differ (nil where they are equal): a failure names a place, not megabytes.
    func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
        a == b ? nil : (0..<min(a.count, b.count)).first { a[$0] != b[$0] } ?? min(a.count, b.count)
    }

    /// The zlib stream of stored blocks for `data`, and whether the CRC-32 register `writeZlibStored` returns is the one
    /// over the stream.
    func zlibStored(_ data: [UInt8]) -> (stream: [UInt8], registerMatches: Bool) {
        var stream = [UInt8](repeating: 0, count: PNG.zlibStoredLength(data.count))
        let register = data.withUnsafeBytes { data in stream.withUnsafeMutableBytes { PNG.writeZlibStored(data, to: $0) } }
        return (stream, register == stream.withUnsafeBytes { PNG.crc32Update(0, $0) })
    }

    func testChecksumsMatchZlib() {
        XCTAssertEqual(crc32(Array("123456789".utf8)), 0xCBF4_3926)
        XCTAssertEqual(adler(ofStream: zlibStored(Array("Wikipedia".utf8)).stream), 0x11E6_0398)
        // Long enough for the 5552-byte runs and for two stored blocks; values from Python's zlib.
        let long = (0..<70_000).map { UInt8(($0 * 7 + 3) % 256) }
        XCTAssertEqual(adler(ofStream: zlibStored(Array(long.prefix(20_000))).stream), 0x2800_E92B)
        XCTAssertEqual(crc32(Array(long.prefix(20_000))), 0xDEBD_A163)
        let (stream, registerMatches) = zlibStored(long)
        XCTAssertEqual(adler(ofStream: stream), 0x8E7B_36C1)
        XCTAssertTrue(registerMatches)
        // Header, then blocks of at most 65535 bytes, each with a 5-byte header; the last one flagged final.
        XCTAssertEqual(stream.count, 2 + 5 + 65_535 + 5 + (70_000 - 65_535) + 4)
        XCTAssertEqual(stream[2], 0)
        XCTAssertEqual(stream[2 + 5 + 65_535], 1)
        // No data: one empty final block.
        XCTAssertEqual(zlibStored([]).stream, [0x78, 0x01, 1, 0, 0, 0xFF, 0xFF, 0, 0, 0, 1])
        XCTAssertTrue(zlibStored([]).registerMatches)
    }

    /// Lengths around the Adler-32 run (5552), the SIMD row (16), the CRC quarters (32) and the stored block (65535),
    /// at unaligned starts; also runs joined with `Adler32.combine` and `crc32Combine` from sums started at zero.
    func testChecksumsMatchByteAtATimeReferences() {
        var random = NoiseGenerator(seed: 7)
        let data = (0..<(3 * 1024 * 1024 + 10)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        data.withUnsafeBytes { data in
            for count in [0, 1, 15, 16, 17, 31, 33, 5551, 5552, 5553, 65_535, 65_536, 3 * 1024 * 1024 + 7] {
                for offset in count > 100_000 ? [3] : [0, 1, 3] {
                    let bytes = UnsafeRawBufferPointer(rebasing: data[offset..<(offset + count)])
                    let (adler32, crc32) = (ReferencePNG.adler32(Array(bytes)), ReferencePNG.crc32(Array(bytes)))
                    var adler = PNG.Adler32()
                    adler.update(bytes)
                    XCTAssertEqual(adler.value, adler32, "Adler-32 of \(count) bytes at \(offset)")
                    XCTAssertEqual(~PNG.crc32Update(0xFFFF_FFFF, bytes), crc32, "CRC-32 of \(count) bytes at \(offset)")
                    let split = count / 3
                    var head = PNG.Adler32()
                    var tail = PNG.Adler32(a: 0, b: 0)
                    head.update(UnsafeRawBufferPointer(rebasing: bytes[..<split]))
                    tail.update(UnsafeRawBufferPointer(rebasing: bytes[split...]))
                    head.combine(tail, count: count - split)
                    XCTAssertEqual(head.value, adler32, "Adler-32 of \(count) bytes joined at \(split)")
                    let crcHead = PNG.crc32Update(0xFFFF_FFFF, UnsafeRawBufferPointer(rebasing: bytes[..<split]))
                    let crcTail = PNG.crc32Update(0, UnsafeRawBufferPointer(rebasing: bytes[split...]))
                    let joined = ~PNG.crc32Combine(crcHead, crcTail, count: count - split)
                    XCTAssertEqual(joined, crc32, "CRC-32 of \(count) bytes joined at \(split)")
                }
            }
        }
        // All bytes 255: the largest sums, where a run too long for 32 bits would overflow.
        let full = [UInt8](repeating: 255, count: 100_000)
        var adler = PNG.Adler32()
        full.withUnsafeBytes { adler.update($0) }
        XCTAssertEqual(adler.value, ReferencePNG.adler32(full))
    }

    /// Images whose data is one byte, exactly one stored block (1456x15), exactly four (1456x60: one part of the
    /// concurrent writer), one row past them, an odd width, one row longer than a block, and a megapixel (13 parts).
    func testEncoderMatchesReferenceEncoder() {
        var random = NoiseGenerator(seed: 11)
        for (width, height) in [(1, 1), (2, 1), (7, 5), (1456, 15), (1456, 60), (1456, 61), (333, 101), (21_845, 1), (1024, 1024)] {
            var rows = (0..<(height * (1 + width * 3))).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            for y in 0..<height { rows[y * (1 + width * 3)] = 0 }
            let expected = ReferencePNG.encode(filteredRows: rows, width: width, height: height)
            XCTAssertNil(firstDifference(PNG.encode(filteredRows: rows[...], width: width, height: height), expected),
                         "\(width)x\(height)")
            // A slice that does not start at index 0, as the pipeline hands over one image of a batch.
            let batch = [0xAB] + rows
            XCTAssertNil(firstDifference(PNG.encode(filteredRows: batch[1...], width: width, height: height), expected),
                         "\(width)x\(height) slice")
        }
    }
}

/// The encoder as first written: one stored block after another appended, Adler-32 and CRC-32 a byte at a time.
enum ReferencePNG {
    static let crcTable: [UInt32] = (0..<256).map { n in
        (0..<8).reduce(UInt32(n)) { c, _ in c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    }

    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        ~bytes.reduce(0xFFFF_FFFF) { c, byte in crcTable[Int((c ^ UInt32(byte)) & 0xFF)] ^ (c >> 8) }
    }

    static func adler32(_ bytes: [UInt8]) -> UInt32 {
        var (a, b): (UInt32, UInt32) = (1, 0)
        for byte in bytes {
            a = (a + UInt32(byte)) % 65_521
            b = (b + a) % 65_521
        }
        return b << 16 | a
    }

    static func bigEndian(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
    }

    static func chunk(_ type: String, _ body: [UInt8]) -> [UInt8] {
        bigEndian(UInt32(body.count)) + Array(type.utf8) + body + bigEndian(crc32(Array(type.utf8) + body))
    }

    static func encode(filteredRows raw: [UInt8], width: Int, height: Int) -> [UInt8] {
        var stream: [UInt8] = [0x78, 0x01]
        var offset = 0
        repeat {
            let length = min(65_535, raw.count - offset)
            stream.append(offset + length == raw.count ? 1 : 0)
            stream += [UInt8(length & 0xFF), UInt8(length >> 8), UInt8(~length & 0xFF), UInt8((~length >> 8) & 0xFF)]
            stream += raw[offset..<(offset + length)]
            offset += length
        } while offset < raw.count
        stream += bigEndian(adler32(raw))
        let header = bigEndian(UInt32(width)) + bigEndian(UInt32(height)) + [8, 2, 0, 0, 0]
        return [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + chunk("IHDR", header) + chunk("IDAT", stream) + chunk("IEND", [])
    }
}
