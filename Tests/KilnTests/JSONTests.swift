import XCTest
@testable import KilnCore

final class JSONTests: XCTestCase {
    func testParsesNestedValues() throws {
        let value = try JSON.parse(#"{"a": [1, 2.5, -3e2], "b": {"c": "x\u00e9\n"}, "d": true, "e": null}"#)
        XCTAssertEqual(value["a"]?.array?.compactMap(\.number), [1, 2.5, -300])
        XCTAssertEqual(value["b"]?["c"]?.string, "xé\n")
        XCTAssertEqual(value["d"]?.bool, true)
        XCTAssertEqual(value["e"], .null)
    }

    func testSurrogatePairs() throws {
        XCTAssertEqual(try JSON.parse(#""\ud83d\ude00""#).string, "😀")
    }

    func testRejectsMalformedText() {
        for bad in ["{", "[1,]", "{\"a\" 1}", "tru", "\"abc", "1 2", "{\"a\":1,}", "\"\\ud800\""] {
            XCTAssertThrowsError(try JSON.parse(bad), bad)
        }
    }

    func testRoundTripsThroughSerialization() throws {
        let text = #"{"k":[1,"two",{"three":false}],"s":"tab\tquote\""}"#
        XCTAssertEqual(try JSON.parse(text).serialized, text)
    }
}
