import KilnCore
import XCTest

/// Paths of the committed fixtures (made by scripts/make_fixtures.py) and comparison helpers.
enum Fixtures {
    static let root: String = {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path + "/fixtures"
    }()

    static func path(_ relative: String) -> String { root + "/" + relative }

    static func reference(_ name: String) throws -> Checkpoint {
        try Checkpoint(path: path("reference/\(name).safetensors"))
    }

    /// A scratch directory for one test (removed by the test's tearDown).
    static func temporaryDirectory() -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-tests-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}

/// Asserts ‖actual − expected‖ / ‖expected‖ ≤ tolerance and returns the error.
@discardableResult
func assertClose(_ actual: HostTensor, _ expected: HostTensor, tolerance: Double, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) -> Double {
    XCTAssertEqual(actual.shape, expected.shape, "\(what): shape", file: file, line: line)
    guard actual.shape == expected.shape else { return .infinity }
    let error = actual.relativeError(to: expected)
    print("relative error \(what): \(error) (tolerance \(tolerance))")
    XCTAssertLessThanOrEqual(error, tolerance, "\(what): relative error \(error)", file: file, line: line)
    return error
}
