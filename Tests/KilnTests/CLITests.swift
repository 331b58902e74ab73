import Foundation
import KilnCore
import XCTest

/// The `kiln` executable end to end: the default run, fixture reproduction through the documented options, and every
/// kind of bad input rejected with a non-zero exit and one clear line on stderr.
final class CLITests: XCTestCase {
    var directory = ""

    override func setUp() { directory = Fixtures.temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    /// The `kiln` binary built beside this test bundle.
    static let executable: String = {
        let bundle = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        return bundle.appendingPathComponent("kiln").path
    }()

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    func kiln(_ arguments: [String], environment: [String: String] = [:]) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CLITests.executable)
        process.arguments = arguments
        // Each test gets its own cache folder, so cached prompt embeddings never leak between tests or runs.
        process.environment = ProcessInfo.processInfo.environment.merging(["KILN_CACHE_DIR": directory + "/cache"]) { $1 }
            .merging(environment) { $1 }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdoutData = out.fileHandleForReading.readDataToEndOfFile()
        let stderrData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Result(status: process.terminationStatus, stdout: String(decoding: stdoutData, as: UTF8.self),
                      stderr: String(decoding: stderrData, as: UTF8.self))
    }

    /// Asserts a clean rejection: exit code 1 (not a crash) and exactly one stderr line that mentions `fragment`.
    func assertRejected(_ arguments: [String], mentioning fragment: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let result = try kiln(arguments)
        XCTAssertEqual(result.status, 1, "exit status for \(arguments): \(result.stderr)", file: file, line: line)
        let lines = result.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "stderr should be one line: \(result.stderr)", file: file, line: line)
        XCTAssertTrue(result.stderr.contains("kiln: error: ") && result.stderr.contains(fragment),
                      "'\(result.stderr)' should mention '\(fragment)'", file: file, line: line)
    }

    func testDefaultRunWritesAPNG() throws {
        let out = directory + "/tiny.png"
        let result = try kiln(["generate", "--out", out, "--steps", "2", "--width", "64", "--height", "80"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stderr.contains("RANDOM-WEIGHT"))
        let png = try FileIO.read(out)
        XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        // IHDR: width 64, height 80; one stored deflate block of 80 filtered rows.
        XCTAssertEqual(Array(png[16..<24]), [0, 0, 0, 64, 0, 0, 0, 80])
        XCTAssertEqual(png.count, 8 + 25 + (12 + 2 + 5 + 80 * (1 + 64 * 3) + 4) + 12)
    }

    /// `--latents`, `--prompt-embeds` and `--save-latents` reproduce diffusers for both variants and layouts.
    func testReproducesDiffusersThroughTheCommandLine() throws {
        let cases = [("tiny-flux-dev", "pipeline_dev_96x160"), ("bfl/flux1-tiny-dev.safetensors", "pipeline_dev_128x128"),
                     ("tiny-flux-schnell", "pipeline_schnell_128x128"), ("bfl/flux1-tiny-schnell.safetensors", "pipeline_schnell_96x160")]
        for (model, reference) in cases {
            let referencePath = Fixtures.path("reference/\(reference).safetensors")
            let ref = try Checkpoint(path: referencePath)
            let saved = directory + "/\(reference).safetensors"
            let result = try kiln(["generate", "--model", Fixtures.path(model), "--latents", referencePath,
                                   "--prompt-embeds", referencePath, "--save-latents", saved,
                                   "--width", ref.metadata["width"]!, "--height", ref.metadata["height"]!,
                                   "--steps", ref.metadata["steps"]!, "--guidance", "3.5", "--out", directory + "/\(reference).png"])
            XCTAssertEqual(result.status, 0, result.stderr)
            assertClose(try Checkpoint(path: saved).tensor("latents"), try ref.tensor("final_latents"),
                        tolerance: 1e-3, "CLI \(model) \(reference)")
        }
    }

    func testInspectReportsBothLayouts() throws {
        let diffusers = try kiln(["inspect", Fixtures.path("tiny-flux-dev")])
        XCTAssertEqual(diffusers.status, 0, diffusers.stderr)
        XCTAssertTrue(diffusers.stdout.contains("layout: diffusers"))
        XCTAssertTrue(diffusers.stdout.contains("variant: dev"))
        XCTAssertTrue(diffusers.stdout.contains("missing or misshapen tensors: none"))
        XCTAssertTrue(diffusers.stdout.contains("unexpected tensors: none"))
        let bfl = try kiln(["inspect", Fixtures.path("bfl/flux1-tiny-schnell.safetensors")])
        XCTAssertEqual(bfl.status, 0, bfl.stderr)
        XCTAssertTrue(bfl.stdout.contains("layout: bfl-single-file"))
        XCTAssertTrue(bfl.stdout.contains("variant: schnell"))
        XCTAssertTrue(bfl.stdout.contains("transformer parameters: 555616 (1 M), dtypes: F16 × 48"), bfl.stdout)
    }

    /// A copy of the BFL dev model whose transformer file is rewritten by `edit`, with `ae.safetensors` beside it.
    func editedModel(_ edit: (inout [SafeTensorsWriter.Entry]) -> Void) throws -> String {
        let source = try SafeTensorsFile(path: Fixtures.path("bfl/flux1-tiny-dev.safetensors"))
        var entries = try source.names.map { SafeTensorsWriter.Entry($0, try source.tensor($0), as: .bf16) }
        edit(&entries)
        let path = directory + "/flux1-edited.safetensors"
        try SafeTensorsWriter.write(entries, to: path)
        try FileManager.default.copyItem(atPath: Fixtures.path("bfl/ae.safetensors"), toPath: directory + "/ae.safetensors")
        return path
    }

    func testMissingTensorIsRejected() throws {
        let model = try editedModel { $0.removeAll { $0.name == "double_blocks.1.txt_mlp.2.weight" } }
        try assertRejected(["generate", "--model", model, "--prompt-embeds", Fixtures.path("reference/pipeline_dev_128x128.safetensors")],
                           mentioning: "'double_blocks.1.txt_mlp.2.weight' is missing")
        let inspect = try kiln(["inspect", model])
        XCTAssertTrue(inspect.stdout.contains("double_blocks.1.txt_mlp.2.weight: missing"), inspect.stdout)
    }

    func testWrongShapeIsRejected() throws {
        let model = try editedModel { entries in
            let i = entries.firstIndex { $0.name == "single_blocks.0.linear2.bias" }!
            entries[i].tensor = HostTensor(shape: [3], data: [1, 2, 3])
        }
        try assertRejected(["generate", "--model", model, "--prompt-embeds", Fixtures.path("reference/pipeline_dev_128x128.safetensors")],
                           mentioning: "'single_blocks.0.linear2.bias' has shape [3], expected [64]")
    }

    func testCorruptFilesAreRejected() throws {
        let good = try FileIO.read(Fixtures.path("bfl/flux1-tiny-dev.safetensors"))
        try FileManager.default.copyItem(atPath: Fixtures.path("bfl/ae.safetensors"), toPath: directory + "/ae.safetensors")
        let path = directory + "/flux1-bad.safetensors"
        let embeds = Fixtures.path("reference/pipeline_dev_128x128.safetensors")

        try FileIO.write(Array(good.prefix(good.count / 2)), to: path)
        try assertRejected(["generate", "--model", path, "--prompt-embeds", embeds], mentioning: "truncated")

        var garbled = good
        for i in 8..<40 { garbled[i] = 0x7B }
        try FileIO.write(garbled, to: path)
        try assertRejected(["inspect", path], mentioning: "not valid JSON")

        // Same header length, but a tensor's end offset now points past the data.
        let headerLength = Int(good[0]) | Int(good[1]) << 8 | Int(good[2]) << 16
        var header = String(decoding: good[8..<(8 + headerLength)], as: UTF8.self)
        let dataLength = good.count - 8 - headerLength
        let lastOffset = "\(dataLength)]"
        XCTAssertTrue(header.contains(lastOffset))
        header = header.replacingOccurrences(of: lastOffset, with: "\(dataLength + 2)]")
        var lying = Array(good.prefix(8)) + Array(header.utf8) + Array(good[(8 + headerLength)...])
        let grown = header.utf8.count
        for i in 0..<8 { lying[i] = UInt8((grown >> (8 * i)) & 0xFF) }
        try FileIO.write(lying, to: path)
        try assertRejected(["generate", "--model", path, "--prompt-embeds", embeds], mentioning: "past the end")

        let unknown = header.replacingOccurrences(of: "\"BF16\"", with: "\"I32\"")
        var typed = Array(good.prefix(8)) + Array(unknown.utf8) + Array(good[(8 + headerLength)...])
        for i in 0..<8 { typed[i] = UInt8((unknown.utf8.count >> (8 * i)) & 0xFF) }
        try FileIO.write(typed, to: path)
        try assertRejected(["inspect", path], mentioning: "unsupported dtype I32")
    }

    func testBadOptionsAreRejected() throws {
        try assertRejected(["generate", "--width", "100"], mentioning: "width 100 is not a multiple of 16")
        try assertRejected(["generate", "--height", "8192"], mentioning: "height 8192 is outside 64...4096")
        try assertRejected(["generate", "--width", "48"], mentioning: "width 48 is outside")
        try assertRejected(["generate", "--steps", "0"], mentioning: "steps must be between 1 and 1000")
        try assertRejected(["generate", "--device", "tpu"], mentioning: "unknown device 'tpu'")
        try assertRejected(["generate", "--precision", "int4"], mentioning: "unknown precision 'int4'")
        try assertRejected(["generate", "--precision", "fp8"], mentioning: "--precision fp8 needs --device cuda")
        try assertRejected(["generate", "--t5-precision", "int8"], mentioning: "unknown --t5-precision 'int8'")
        try assertRejected(["generate", "--t5-precision", "fp8"], mentioning: "--t5-precision fp8 needs FP8 linears")
        if !FileManager.default.fileExists(atPath: "/dev/nvidiactl") {
            try assertRejected(["generate", "--device", "cuda"], mentioning: "libcuda")
        }
        try assertRejected(["generate", "--prompt", ""], mentioning: "the prompt is empty")
        try assertRejected(["generate", "--model", directory + "/nowhere"], mentioning: "cannot read")
        try assertRejected(["generate", "--random-weights", "pro"], mentioning: "unknown variant 'pro'")
        try assertRejected(["generate", "--random-weights", "dev", "--model", Fixtures.path("tiny-flux-dev")],
                           mentioning: "exclude each other")
        if ProcessInfo.processInfo.physicalMemory < 48 << 30 {
            try assertRejected(["bench", "--random-weights", "dev"], mentioning: "needs 44 GiB for fp32 weights on the CPU")
        }
        try assertRejected(["inspect", directory], mentioning: "not a diffusers FLUX folder")
        try assertRejected(["generate", "--latents", Fixtures.path("reference/pipeline_dev_96x160.safetensors"),
                            "--width", "128", "--height", "128"],
                           mentioning: "'latents' has shape [1, 16, 12, 20], expected [1, 16, 16, 16]")
    }
}

extension CLITests {
    func testBenchPrintsStageTimesAsJSON() throws {
        let path = directory + "/bench.json"
        let result = try kiln(["bench", "--steps", "2", "--runs", "1", "--width", "64", "--height", "64", "--json", path])
        XCTAssertEqual(result.status, 0, result.stderr)
        let report = try FileIO.readJSON(path)
        XCTAssertEqual(report["device"]?.string, "cpu")
        XCTAssertEqual(report["eager_step_ms"]?.array?.count, 2)
        XCTAssertEqual(report["runs"]?.array?.count, 2)
        XCTAssertGreaterThan(try XCTUnwrap(report["step_median_ms"]?.number), 0)
        XCTAssertGreaterThan(try XCTUnwrap(report["vae_decode_median_ms"]?.number), 0)
        XCTAssertGreaterThan(try XCTUnwrap(report["process_start_to_first_image_s"]?.number), 0)
        XCTAssertEqual(try JSON.parse(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), report)
    }
}

extension CLITests {
    /// `--prompt` through Kiln's tokenizers and text encoders reproduces FluxPipeline(prompt=...) with the same noise.
    func testPromptReproducesDiffusers() throws {
        for name in ["a", "b"] {
            let referencePath = Fixtures.path("reference/pipeline_prompt_\(name).safetensors")
            let ref = try Checkpoint(path: referencePath)
            let latents = directory + "/final-\(name).safetensors"
            let embeds = directory + "/embeds-\(name).safetensors"
            let arguments = ["generate", "--model", Fixtures.path("tiny-flux-dev-text"), "--prompt", ref.metadata["prompt"]!,
                             "--max-sequence-length", ref.metadata["max_sequence_length"]!, "--latents", referencePath,
                             "--width", ref.metadata["width"]!, "--height", ref.metadata["height"]!, "--steps", ref.metadata["steps"]!,
                             "--save-latents", latents, "--save-prompt-embeds", embeds, "--out", directory + "/\(name).png"]
            let result = try kiln(arguments)
            XCTAssertEqual(result.status, 0, result.stderr)
            let saved = try Checkpoint(path: embeds)
            assertClose(try saved.tensor("prompt_embeds"), try ref.tensor("prompt_embeds"), tolerance: 1e-4, "prompt \(name) T5 embeddings")
            assertClose(try saved.tensor("pooled_prompt_embeds"), try ref.tensor("pooled_prompt_embeds"), tolerance: 1e-4,
                        "prompt \(name) pooled CLIP")
            assertClose(try Checkpoint(path: latents).tensor("latents"), try ref.tensor("final_latents"), tolerance: 1e-3,
                        "prompt \(name) final latents")
            if name == "b" {
                XCTAssertTrue(result.stderr.contains("kiln: warning: The following part of your input was truncated"), result.stderr)
            }
            // The second run answers from the cache: same embeddings, and the entry is on disk.
            let again = try kiln(arguments)
            XCTAssertEqual(again.status, 0, again.stderr)
            XCTAssertEqual(try Checkpoint(path: embeds).tensor("prompt_embeds"), try saved.tensor("prompt_embeds"))
        }
        let entries = try FileManager.default.contentsOfDirectory(atPath: directory + "/cache/prompt-embeds")
        XCTAssertEqual(entries.filter { $0.hasSuffix(".safetensors") }.count, 2)
    }

    /// `kiln encode` writes the embeddings FluxPipeline computes, and rejects bad input.
    func testEncodeWritesTheEmbeddings() throws {
        let referencePath = Fixtures.path("reference/pipeline_prompt_a.safetensors")
        let ref = try Checkpoint(path: referencePath)
        let out = directory + "/encoded.safetensors"
        let result = try kiln(["encode", "--text-encoders", Fixtures.path("tiny-flux-dev-text"), "--prompt", ref.metadata["prompt"]!,
                               "--max-sequence-length", ref.metadata["max_sequence_length"]!, "--out", out])
        XCTAssertEqual(result.status, 0, result.stderr)
        let saved = try Checkpoint(path: out)
        assertClose(try saved.tensor("prompt_embeds"), try ref.tensor("prompt_embeds"), tolerance: 1e-4, "encode T5 embeddings")
        assertClose(try saved.tensor("pooled_prompt_embeds"), try ref.tensor("pooled_prompt_embeds"), tolerance: 1e-4, "encode pooled CLIP")
        XCTAssertEqual(try saved.tensor("clip_last_hidden").shape.count, 3)
        try assertRejected(["encode", "--text-encoders", Fixtures.path("tiny-flux-dev-text"), "--prompt", "", "--out", out],
                           mentioning: "the prompt is empty")
        try assertRejected(["encode", "--text-encoders", Fixtures.path("tiny-flux-dev"), "--prompt", "a cat", "--out", out],
                           mentioning: "tokenizer")
    }

    func testPromptInputsAreChecked() throws {
        let bad = directory + "/bad.txt"
        FileManager.default.createFile(atPath: bad, contents: Data([0x61, 0xFF, 0x62]))
        try assertRejected(["generate", "--model", Fixtures.path("tiny-flux-dev-text"), "--prompt-file", bad], mentioning: "UTF-8")
        try assertRejected(["generate", "--model", Fixtures.path("tiny-flux-dev"), "--prompt", "a cat"], mentioning: "no text encoders")
        try assertRejected(["generate", "--model", Fixtures.path("bfl/flux1-tiny-dev.safetensors"), "--prompt", "a cat"],
                           mentioning: "--text-encoders")
        try assertRejected(["generate", "--model", Fixtures.path("tiny-flux-dev-text")], mentioning: "a prompt is needed")
    }
}

extension CLITests {
    /// `kiln tokenize` prints transformers' ids for the committed cases (raw and padded, both tokenizers).
    func testTokenizeMatchesTransformers() throws {
        let reference = try FileIO.readJSON(Fixtures.path("text/tokens.json"))
        let cases = try XCTUnwrap(reference["cases"]?.array)
        let t5Length = String(try XCTUnwrap(reference["t5_padded_max_length"]?.int))
        // A spread of the committed strings: every 40th, which covers accents, CJK, emoji, whitespace and punctuation runs.
        for entry in stride(from: 1, to: cases.count, by: 40).map({ cases[$0] }) {
            let text = try XCTUnwrap(entry["text"]?.string)
            for (encoder, raw, padded, length) in [("clip", "clip", "clip_padded", "77"), ("t5", "t5", "t5_padded", t5Length)] {
                let folder = Fixtures.path("text")
                let rawResult = try kiln(["tokenize", "--model", folder, "--encoder", encoder, "--text", text, "--raw"])
                XCTAssertEqual(rawResult.status, 0, rawResult.stderr)
                XCTAssertEqual(try JSON.parse(rawResult.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), entry[raw], "\(encoder) raw: \(text)")
                let paddedResult = try kiln(["tokenize", "--model", folder, "--encoder", encoder, "--text", text, "--max-length", length])
                XCTAssertEqual(try JSON.parse(paddedResult.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), entry[padded],
                               "\(encoder) padded: \(text)")
            }
        }
    }
}

extension CLITests {
    /// NaN in the inputs flows to the image: the run still writes a PNG (black where NaN) and warns, instead of trapping.
    func testNonFiniteOutputIsWrittenAndReported() throws {
        let reference = try Checkpoint(path: Fixtures.path("reference/pipeline_dev_96x160.safetensors"))
        var noise = try reference.tensor("latents")
        noise.data[17] = .nan
        let path = directory + "/nan.safetensors"
        try SafeTensorsWriter.write([.init("latents", noise), .init("prompt_embeds", try reference.tensor("prompt_embeds")),
                                     .init("pooled_prompt_embeds", try reference.tensor("pooled_prompt_embeds"))], to: path)
        let result = try kiln(["generate", "--model", Fixtures.path("tiny-flux-dev"), "--latents", path, "--prompt-embeds", path,
                               "--height", "96", "--width", "160", "--steps", "1", "--out", directory + "/nan.png"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stderr.contains("NaN or infinite"), result.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: directory + "/nan.png"))
    }

    /// Scalars where matrices belong, and hostile config numbers, are clean errors.
    func testHostileFilesAndConfigsAreRejected() throws {
        let scalar = try editedModel { entries in
            let i = entries.firstIndex { $0.name == "double_blocks.0.img_attn.norm.query_norm.scale" }!
            entries[i].tensor = HostTensor(shape: [], data: [1])
        }
        try assertRejected(["inspect", scalar], mentioning: "expected 1 positive dimensions")

        func folder(editing part: String, _ file: String, _ edit: (inout String) -> Void) throws -> String {
            let copy = directory + "/model-\(part)"
            try? FileManager.default.removeItem(atPath: copy)
            try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
            for entry in ["model_index.json", "transformer", "vae", "scheduler"] {
                let source = URL(fileURLWithPath: Fixtures.path("tiny-flux-dev/\(entry)")).resolvingSymlinksInPath().path
                try FileManager.default.copyItem(atPath: source, toPath: copy + "/" + entry)
            }
            let path = "\(copy)/\(part)/\(file)"
            var text = try String(contentsOfFile: path, encoding: .utf8)
            edit(&text)
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return copy
        }
        let embeds = Fixtures.path("reference/pipeline_dev_96x160.safetensors")
        let huge = try folder(editing: "scheduler", "scheduler_config.json") {
            $0 = $0.replacingOccurrences(of: "\"num_train_timesteps\": 1000", with: "\"num_train_timesteps\": 1e300")
        }
        try assertRejected(["generate", "--model", huge, "--prompt-embeds", embeds], mentioning: "num_train_timesteps")
        let equal = try folder(editing: "scheduler", "scheduler_config.json") {
            $0 = $0.replacingOccurrences(of: "\"max_image_seq_len\": 4096", with: "\"max_image_seq_len\": 256")
        }
        try assertRejected(["generate", "--model", equal, "--prompt-embeds", embeds], mentioning: "must exceed")
        let axes = try folder(editing: "transformer", "config.json") {
            $0 = $0.replacingOccurrences(of: "\"axes_dims_rope\": [\n    4,\n    14,\n    14\n  ]", with: "\"axes_dims_rope\": [4, 28]")
        }
        try assertRejected(["inspect", axes], mentioning: "RoPE needs 3 axes")
        let latent = try folder(editing: "vae", "config.json") {
            $0 = $0.replacingOccurrences(of: "\"latent_channels\": 16", with: "\"latent_channels\": 8")
        }
        try assertRejected(["inspect", latent], mentioning: "latent channels")
    }

    /// A cache hit is real: once the embeddings are cached, the text encoders' weights are not needed any more.
    func testPromptCacheAnswersWithoutTheEncoders() throws {
        let copy = directory + "/model"
        try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
        for entry in try FileManager.default.contentsOfDirectory(atPath: Fixtures.path("tiny-flux-dev-text")) {
            let source = URL(fileURLWithPath: Fixtures.path("tiny-flux-dev-text/\(entry)")).resolvingSymlinksInPath().path
            try FileManager.default.copyItem(atPath: source, toPath: copy + "/" + entry)
        }
        let arguments = ["generate", "--model", copy, "--prompt", "a kiln", "--height", "64", "--width", "64", "--steps", "1",
                         "--save-prompt-embeds", directory + "/e.safetensors", "--out", directory + "/c.png"]
        XCTAssertEqual(try kiln(arguments).status, 0)
        let first = try Checkpoint(path: directory + "/e.safetensors").tensor("prompt_embeds")
        // Garble a T5 shard but keep its size and modification time (the cache key's view of the files): a cache hit
        // never reads it, a miss would fail.
        let shard = copy + "/text_encoder_2/model-00001-of-00003.safetensors"
        let attributes = try FileManager.default.attributesOfItem(atPath: shard)
        let size = try XCTUnwrap(attributes[.size] as? Int)
        try Data(repeating: 0x7B, count: size).write(to: URL(fileURLWithPath: shard))
        try FileManager.default.setAttributes([.modificationDate: attributes[.modificationDate]!], ofItemAtPath: shard)
        let cached = try kiln(arguments)
        XCTAssertEqual(cached.status, 0, cached.stderr)
        XCTAssertEqual(try Checkpoint(path: directory + "/e.safetensors").tensor("prompt_embeds"), first)
        try assertRejected(arguments + ["--no-prompt-cache"], mentioning: "model-00001-of-00003.safetensors")
    }
}

extension CLITests {
    func testParityWritesEveryBlockOutput() throws {
        let out = directory + "/parity.safetensors"
        let result = try kiln(["parity", "--model", Fixtures.path("tiny-flux-dev"), "--reference", Fixtures.path("reference/transformer_dev.safetensors"),
                               "--vae-reference", Fixtures.path("reference/vae.safetensors"), "--out", out])
        XCTAssertEqual(result.status, 0, result.stderr)
        let kiln = try Checkpoint(path: out)
        let reference = try Fixtures.reference("transformer_dev")
        XCTAssertEqual(kiln.names.count, 2 + 2 * (2 + 2) + 1)
        for name in kiln.names where name != "decode_out" {
            assertClose(try kiln.tensor(name), try reference.tensor(name), tolerance: 1e-4, "parity \(name)")
        }
        assertClose(try kiln.tensor("decode_out"), try Fixtures.reference("vae").tensor("decode_out"), tolerance: 1e-4, "parity VAE")
    }
}
