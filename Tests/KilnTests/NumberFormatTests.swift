import KilnCore
import XCTest

final class NumberFormatTests: XCTestCase {
    func testBF16RoundsToNearestEven() {
        XCTAssertEqual(NumberFormats.floatToBF16(1.0), 0x3F80)
        // 1 + 2^-8 lies halfway between two bf16 values: ties go to the even mantissa (1.0).
        XCTAssertEqual(NumberFormats.floatToBF16(1.00390625), 0x3F80)
        XCTAssertEqual(NumberFormats.floatToBF16(1.01171875), 0x3F82)
        XCTAssertEqual(NumberFormats.bf16ToFloat(0xC040), -3.0)
        XCTAssertTrue(NumberFormats.bf16ToFloat(NumberFormats.floatToBF16(.nan)).isNaN)
    }

    func testE4M3CodesAndSaturation() {
        XCTAssertEqual(NumberFormats.e4m3ToFloat(0x7E), 448)
        XCTAssertEqual(NumberFormats.e4m3ToFloat(0x38), 1)
        XCTAssertEqual(NumberFormats.e4m3ToFloat(0x01), 0x1p-9)
        XCTAssertTrue(NumberFormats.e4m3ToFloat(0x7F).isNaN)
        XCTAssertEqual(NumberFormats.floatToE4M3(1000), 0x7E)
        XCTAssertEqual(NumberFormats.floatToE4M3(-1), 0xB8)
        for code in UInt8(0)...0x7E {
            XCTAssertEqual(NumberFormats.floatToE4M3(NumberFormats.e4m3ToFloat(code)), code)
        }
    }

    func testNoiseIsSeededAndStandard() {
        var a = NoiseGenerator(seed: 7)
        var b = NoiseGenerator(seed: 7)
        let x = a.normal(20_000)
        XCTAssertEqual(x, b.normal(20_000))
        let mean = x.reduce(0, +) / Float(x.count)
        let variance = x.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(x.count)
        XCTAssertEqual(mean, 0, accuracy: 0.03)
        XCTAssertEqual(variance, 1, accuracy: 0.03)
    }
}
