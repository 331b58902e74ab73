import Foundation
import KilnCore
import XCTest

/// The committed text fixtures (made by scripts/make_text_fixtures.py).
enum TextFixtures {
    static let root: String = {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path + "/fixtures/text"
    }()

    static func path(_ relative: String) -> String { root + "/" + relative }

    struct Case {
        let text: String
        let clip: [Int]
        let clipPadded: [Int]
        let t5: [Int]
        let t5Padded: [Int]
    }

    static func ints(_ json: JSON?) -> [Int] { json?.array?.compactMap(\.int) ?? [] }

    static let tokens: JSON = try! FileIO.readJSON(path("tokens.json"))

    static let cases: [Case] = tokens["cases"]!.array!.map {
        Case(text: $0["text"]!.string!, clip: ints($0["clip"]), clipPadded: ints($0["clip_padded"]),
             t5: ints($0["t5"]), t5Padded: ints($0["t5_padded"]))
    }

    static func temporaryDirectory() -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-text-tests-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}

/// A readable form of a string for failure messages.
func shown(_ text: String) -> String {
    String(text.unicodeScalars.prefix(60).map { s in
        s.value < 0x20 || (s.value >= 0x7F && s.value < 0xA0) ? "\\u{\(String(s.value, radix: 16))}" : String(s)
    }.joined())
}
