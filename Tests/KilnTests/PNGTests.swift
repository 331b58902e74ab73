@testable import KilnCore
import XCTest

/// The PNG writer's checksums against zlib's published values, and a stream split into stored blocks.
final class PNGTests: XCTestCase {
    func adler(ofStream stream: [UInt8]) -> UInt32 {
        stream.suffix(4).reduce(0) { $0 << 8 | UInt32($1) }
    }

    func testChecksumsMatchZlib() {
        XCTAssertEqual(PNG.crc32(Array("123456789".utf8)), 0xCBF4_3926)
        XCTAssertEqual(adler(ofStream: PNG.zlibStored(Array("Wikipedia".utf8)[...])), 0x11E6_0398)
        // Long enough for the deferred modulo (5552-byte runs) and for two stored blocks; values from Python's zlib.
        let long = (0..<70_000).map { UInt8(($0 * 7 + 3) % 256) }
        XCTAssertEqual(adler(ofStream: PNG.zlibStored(Array(long.prefix(20_000))[...])), 0x2800_E92B)
        XCTAssertEqual(PNG.crc32(Array(long.prefix(20_000))), 0xDEBD_A163)
        let stream = PNG.zlibStored(long[...])
        XCTAssertEqual(adler(ofStream: stream), 0x8E7B_36C1)
        // Header, then blocks of at most 65535 bytes, each with a 5-byte header; the last one flagged final.
        XCTAssertEqual(stream.count, 2 + 5 + 65_535 + 5 + (70_000 - 65_535) + 4)
        XCTAssertEqual(stream[2], 0)
        XCTAssertEqual(stream[2 + 5 + 65_535], 1)
    }
}
