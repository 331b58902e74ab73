import Foundation
import KilnCore
import KilnText
import XCTest

/// Bad input: missing files are named, invalid UTF-8 is an error.
final class TokenizerInputTests: XCTestCase {
    func testMissingCLIPFileIsNamed() throws {
        let folder = TextFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try FileManager.default.copyItem(atPath: TextFixtures.path("tokenizer/vocab.json"), toPath: folder + "/vocab.json")
        XCTAssertThrowsError(try CLIPTokenizer(folder: folder)) { error in
            XCTAssertTrue("\(error)".contains("merges.txt"), "\(error)")
            XCTAssertTrue("\(error)".contains(folder), "\(error)")
        }
        XCTAssertThrowsError(try CLIPTokenizer(folder: folder + "/nowhere")) { error in
            XCTAssertTrue("\(error)".contains("vocab.json"), "\(error)")
        }
    }

    func testMissingT5FileIsNamed() {
        let folder = TextFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        XCTAssertThrowsError(try T5Tokenizer(folder: folder)) { error in
            XCTAssertTrue("\(error)".contains("spiece.model"), "\(error)")
        }
    }

    func testCorruptSpieceModelIsAnError() throws {
        let folder = TextFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try Data([0x0A, 0xFF, 0xFF, 0x01]).write(to: URL(fileURLWithPath: folder + "/spiece.model"))
        XCTAssertThrowsError(try T5Tokenizer(folder: folder)) { error in
            XCTAssertTrue("\(error)".contains("spiece.model"), "\(error)")
        }
    }

    func testInvalidUTF8PromptFileIsAnError() throws {
        let folder = TextFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/prompt.txt"
        try Data([0x61, 0x20, 0xC3, 0x28, 0x62]).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try PromptFile.read(path)) { error in
            XCTAssertEqual(error as? KilnError, .corruptFile(path: path, reason: "not valid UTF-8 text"))
        }
        try Data("a photo of a cat\n".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try PromptFile.read(path), "a photo of a cat\n")
    }
}
