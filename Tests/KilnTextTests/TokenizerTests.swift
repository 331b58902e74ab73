import KilnCore
@testable import KilnText
import XCTest

/// Token ids against transformers 5.24 (`CLIPTokenizer`, `T5TokenizerFast`) on every committed string.
final class TokenizerTests: XCTestCase {
    static let clip = try! CLIPTokenizer(folder: TextFixtures.path("tokenizer"))
    static let t5 = try! T5Tokenizer(folder: TextFixtures.path("tokenizer_2"))

    func testFixtureHasEnoughStrings() {
        XCTAssertGreaterThanOrEqual(TextFixtures.cases.count, 300)
    }

    func testCLIPRawIdsMatchTransformers() {
        var failures = 0
        for c in TextFixtures.cases {
            let ids = Self.clip.encode(c.text)
            if ids != c.clip {
                failures += 1
                if failures <= 10 { XCTFail("CLIP '\(shown(c.text))': \(ids) != \(c.clip)") }
            }
        }
        XCTAssertEqual(failures, 0, "CLIP raw ids differ on \(failures) of \(TextFixtures.cases.count) strings")
    }

    func testCLIPPaddedIdsMatchTransformers() throws {
        let length = TextFixtures.tokens["clip_max_length"]!.int!
        XCTAssertEqual(Self.clip.modelMaxLength, 77)
        for c in TextFixtures.cases {
            let ids = try Self.clip.encode(c.text, maxLength: length).ids
            XCTAssertEqual(ids, c.clipPadded, "CLIP padded '\(shown(c.text))'")
        }
    }

    func checkT5(_ tokenizer: T5Tokenizer, file: StaticString = #filePath, line: UInt = #line) throws {
        let length = TextFixtures.tokens["t5_padded_max_length"]!.int!
        var failures = 0
        for c in TextFixtures.cases {
            let ids = tokenizer.encode(c.text)
            if ids != c.t5 {
                failures += 1
                if failures <= 10 { XCTFail("T5 '\(shown(c.text))': \(ids) != \(c.t5)", file: file, line: line) }
            }
            XCTAssertEqual(try tokenizer.encode(c.text, maxLength: length).ids, c.t5Padded,
                           "T5 padded '\(shown(c.text))'", file: file, line: line)
        }
        XCTAssertEqual(failures, 0, "T5 ids differ on \(failures) of \(TextFixtures.cases.count) strings", file: file, line: line)
        for long in TextFixtures.tokens["t5_long"]!.array! {
            let ids = try tokenizer.encode(long["text"]!.string!, maxLength: long["max_length"]!.int!).ids
            XCTAssertEqual(ids, TextFixtures.ints(long["t5_padded"]), file: file, line: line)
        }
    }

    func testT5FromSpieceModelMatchesTransformers() throws {
        XCTAssertTrue(Self.t5.source.hasSuffix("spiece.model"))
        try checkT5(Self.t5)
    }

    func testT5FromTokenizerJSONMatchesTransformers() throws {
        try checkT5(try T5Tokenizer(tokenizerJSON: TextFixtures.path("tokenizer_2/tokenizer.json")))
    }

    func testSpecialIds() {
        XCTAssertEqual(Self.clip.encode(""), [49406, 49407])
        XCTAssertEqual(Self.clip.padId, 49407, "FLUX pads CLIP with <|endoftext|>")
        XCTAssertEqual(Self.t5.encode(""), [1])
        XCTAssertEqual(Self.t5.padId, 0)
        XCTAssertEqual(Self.t5.tokens.count, 1100)
    }

    func testTruncationKeepsEndToken() throws {
        let long = String(repeating: "a photo of a cat ", count: 40)
        let clip = try Self.clip.encode(long, maxLength: 77)
        XCTAssertEqual(clip.ids.count, 77)
        XCTAssertEqual(clip.ids.first, 49406)
        XCTAssertEqual(clip.ids.last, 49407)
        XCTAssertEqual(clip.removedIds.count, 40 * 5 - 75)
        XCTAssertEqual(Self.clip.decode(Array(clip.ids[1..<9])), "a photo of a cat a photo of")
        let t5 = try Self.t5.encode(long, maxLength: 16)
        XCTAssertEqual(t5.ids.count, 16)
        XCTAssertEqual(t5.ids.last, 1)
        XCTAssertTrue(t5.truncated)
        XCTAssertThrowsError(try Self.clip.encode("x", maxLength: 1))
    }

    func testDecodeRoundTrips() {
        XCTAssertEqual(Self.clip.decode(Self.clip.encode("Hello, World! 中文 😀")), "hello , world ! 中文 😀")
        XCTAssertEqual(Self.t5.decode(Self.t5.encode("a photo of a cat")), "a photo of a cat")
    }
}
