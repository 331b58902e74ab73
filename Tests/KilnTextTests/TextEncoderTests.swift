import KilnBackends
import KilnCore
import KilnText
import XCTest

/// The CLIP and T5 encoders on the CPU against transformers (fp32) on the tiny fixture models.
final class TextEncoderTests: XCTestCase {
    static let backend = CPUBackend()
    static let reference = try! Checkpoint(path: TextFixtures.path("reference.safetensors"))
    static let meta = try! FileIO.readJSON(TextFixtures.path("reference.json"))
    static let clip = try! CLIPTextModel(folder: TextFixtures.path("text_encoder"), backend: backend)
    static let t5 = try! T5Encoder(folder: TextFixtures.path("text_encoder_2"), backend: backend)
    static let tolerance = 1e-4

    func relativeError(_ actual: HostTensor, _ expected: HostTensor, _ what: String) -> Double {
        XCTAssertEqual(actual.shape, expected.shape, what)
        guard actual.shape == expected.shape else { return .infinity }
        let error = actual.relativeError(to: expected)
        XCTAssertLessThanOrEqual(error, Self.tolerance, what)
        return error
    }

    func testCLIPMatchesTransformers() throws {
        let tokenizer = try CLIPTokenizer(folder: TextFixtures.path("tokenizer"))
        var worst = 0.0
        for prompt in Self.meta["prompts"]!.array! {
            let key = prompt["key"]!.string!
            let ids = TextFixtures.ints(prompt["clip_ids"])
            XCTAssertEqual(try tokenizer.encode(prompt["text"]!.string!, maxLength: 77).ids, ids, key)
            let out = try Self.clip(ids: ids, Self.backend)
            worst = max(worst, relativeError(Self.backend.host(out.lastHidden),
                                             try Self.reference.tensor("\(key).clip_last_hidden_state"), "\(key) last hidden"))
            worst = max(worst, relativeError(Self.backend.host(out.pooled),
                                             try Self.reference.tensor("\(key).clip_pooled"), "\(key) pooled"))
        }
        print("CLIP worst relative error \(worst)")
    }

    func testT5MatchesTransformers() throws {
        let tokenizer = try T5Tokenizer(folder: TextFixtures.path("tokenizer_2"))
        var worst = 0.0
        for prompt in Self.meta["prompts"]!.array! {
            let key = prompt["key"]!.string!
            let ids = TextFixtures.ints(prompt["t5_ids"])
            XCTAssertEqual(try tokenizer.encode(prompt["text"]!.string!, maxLength: prompt["t5_max_length"]!.int!).ids, ids, key)
            let out = try Self.t5(ids: ids, Self.backend)
            worst = max(worst, relativeError(Self.backend.host(out), try Self.reference.tensor("\(key).t5_last_hidden_state"),
                                             "\(key) T5 last hidden"))
        }
        print("T5 worst relative error \(worst)")
    }

    func testRelativePositionBucketsMatchTorch() {
        let table = Self.meta["t5_buckets"]!
        let first = table["min_relative_position"]!.int!
        let buckets = TextFixtures.ints(table["buckets"])
        for (i, expected) in buckets.enumerated() {
            XCTAssertEqual(Self.t5.config.bucket(first + i), expected, "relative position \(first + i)")
        }
    }

    func testPipelineEncodeShapesAndTruncationWarning() throws {
        let encoders = try TextEncoders.load(modelFolder: TextFixtures.root, backend: Self.backend)
        var warnings: [String] = []
        encoders.warn = { warnings.append($0) }
        let short = try encoders.encode(prompt: "a photo of a cat", maxLength: 32)
        XCTAssertEqual(Self.backend.shape(short.promptEmbeds), [1, 32, 64])
        XCTAssertEqual(Self.backend.shape(short.pooled), [1, 32])
        XCTAssertTrue(warnings.isEmpty)

        let long = String(repeating: "a highly detailed photograph of a red fox, ", count: 12)
        _ = try encoders.encode(prompt: long, maxLength: 64)
        XCTAssertEqual(warnings.count, 2, "\(warnings)")
        XCTAssertTrue(warnings.first?.contains("CLIP can only handle sequences up to 77 tokens") == true, "\(warnings)")
        XCTAssertTrue(warnings.last?.contains("`max_sequence_length` is set to 64 tokens") == true, "\(warnings)")
        XCTAssertTrue(warnings.last?.contains("red fox") == true, "\(warnings)")

        // A second call is answered from the cache, with the same values and no new warnings.
        let again = try encoders.encode(prompt: "a photo of a cat", maxLength: 32)
        XCTAssertEqual(Self.backend.host(again.promptEmbeds), Self.backend.host(short.promptEmbeds))
        XCTAssertEqual(warnings.count, 2)
    }
}

/// Wiring bugs move the tiny encoders' outputs far past the tolerance (the fixtures' init is loud enough).
final class TextEncoderMutationTests: XCTestCase {
    func testCLIPFaultsAreCaught() throws {
        let prompt = TextEncoderTests.meta["prompts"]!.array![0]
        let key = prompt["key"]!.string!
        let ids = TextFixtures.ints(prompt["clip_ids"])
        let hidden = try TextEncoderTests.reference.tensor("\(key).clip_last_hidden_state")
        let pooled = try TextEncoderTests.reference.tensor("\(key).clip_pooled")
        for fault in [TextFaults.noCausalMask, .pooledAtLastToken, .noFinalNorm] {
            var model = TextEncoderTests.clip
            model.faults = fault
            let out = try model(ids: ids, TextEncoderTests.backend)
            let error = max(TextEncoderTests.backend.host(out.lastHidden).relativeError(to: hidden),
                            TextEncoderTests.backend.host(out.pooled).relativeError(to: pooled))
            XCTAssertGreaterThan(error, 1e-2, "CLIP fault \(fault.rawValue) went unnoticed")
        }
    }

    func testT5FaultsAreCaught() throws {
        let prompt = TextEncoderTests.meta["prompts"]!.array![0]
        let key = prompt["key"]!.string!
        let ids = TextFixtures.ints(prompt["t5_ids"])
        let expected = try TextEncoderTests.reference.tensor("\(key).t5_last_hidden_state")
        for fault in [TextFaults.bucketsMirrored, .noPositionBias, .gateSwapped, .noFinalNorm] {
            var model = TextEncoderTests.t5
            model.faults = fault
            let error = TextEncoderTests.backend.host(try model(ids: ids, TextEncoderTests.backend)).relativeError(to: expected)
            XCTAssertGreaterThan(error, 1e-2, "T5 fault \(fault.rawValue) went unnoticed")
            print("T5 fault \(fault.rawValue): relative error \(error)")
        }
    }
}
