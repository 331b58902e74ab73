import KilnBackends
import KilnCore
import KilnModels
import KilnPipeline
import XCTest

/// The whole pipeline (several steps, square and non-square) against diffusers' FluxPipeline in fp32, with the same
/// initial latents and prompt embeddings, for dev- and schnell-like models in both file layouts; and mutation checks
/// proving the comparison fails when the wiring is wrong.
final class PipelineTests: XCTestCase {
    static let latentTolerance = 1e-3
    static let imageTolerance = 1e-4

    struct Run {
        var finalLatents: HostTensor
        var image: HostTensor
    }

    func run(model: String, reference: String, faults: Faults = []) throws -> (run: Run, expected: Run) {
        let files = try ModelFiles(path: Fixtures.path(model))
        let pipeline = try TextToImagePipeline(files: files, backend: CPUBackend())
        pipeline.faults = faults
        let ref = try Fixtures.reference(reference)
        var options = GenerationOptions()
        options.height = Int(ref.metadata["height"]!)!
        options.width = Int(ref.metadata["width"]!)!
        options.steps = Int(ref.metadata["steps"]!)!
        options.guidance = 3.5
        try options.validate()
        let prompt = PromptEmbeddings(sequence: try ref.tensor("prompt_embeds"), pooled: try ref.tensor("pooled_prompt_embeds"))
        let final = try pipeline.denoise(latents: try ref.tensor("latents"), prompt: prompt, options: options)
        return (Run(finalLatents: final, image: pipeline.decode(final)),
                Run(finalLatents: try ref.tensor("final_latents"), image: try ref.tensor("image")))
    }

    func check(model: String, reference: String) throws {
        let (run, expected) = try run(model: model, reference: reference)
        assertClose(run.finalLatents, expected.finalLatents, tolerance: PipelineTests.latentTolerance, "\(model) \(reference) latents")
        assertClose(run.image, expected.image, tolerance: PipelineTests.imageTolerance, "\(model) \(reference) image")
    }

    func testDevSquareDiffusers() throws { try check(model: "tiny-flux-dev", reference: "pipeline_dev_128x128") }
    func testDevNonSquareDiffusers() throws { try check(model: "tiny-flux-dev", reference: "pipeline_dev_96x160") }
    func testDevSquareBFL() throws { try check(model: "bfl/flux1-tiny-dev.safetensors", reference: "pipeline_dev_128x128") }
    func testDevNonSquareBFL() throws { try check(model: "bfl/flux1-tiny-dev.safetensors", reference: "pipeline_dev_96x160") }
    func testSchnellSquareDiffusers() throws { try check(model: "tiny-flux-schnell", reference: "pipeline_schnell_128x128") }
    func testSchnellNonSquareDiffusers() throws { try check(model: "tiny-flux-schnell", reference: "pipeline_schnell_96x160") }
    func testSchnellNonSquareBFL() throws {
        try check(model: "bfl/flux1-tiny-schnell.safetensors", reference: "pipeline_schnell_96x160")
    }

    /// PNG image data made by `decodeToPNGRows` (`Backend.imageRows`) is byte for byte what the float images give.
    func testPNGRowsMatchTheFloatImages() throws {
        let files = try ModelFiles(path: Fixtures.path("tiny-flux-dev"))
        let pipeline = try TextToImagePipeline(files: files, backend: CPUBackend())
        let latents = HostTensor(shape: [2, 16, 12, 20], data: (0..<(2 * 16 * 12 * 20)).map { Float(($0 * 7919) % 1000) / 250 - 2 })
        let decoded = pipeline.decodeToPNGRows(latents)
        XCTAssertEqual([decoded.width, decoded.height, decoded.images.count, decoded.nonFinite], [160, 96, 2, 0])
        for (rows, image) in zip(decoded.images, pipeline.decode(latents).batchItems()) {
            XCTAssertEqual(PNG.encode(filteredRows: rows, width: 160, height: 96), PNG.encode(image: image))
        }
    }

    /// Each wiring bug must move the compared output far (more than 10×) past its tolerance.
    func testMutationsAreCaught() throws {
        struct Mutation {
            var name: String
            var fault: Faults
            var comparesImage = false
        }
        let mutations = [
            Mutation(name: "RoPE off", fault: .ropeOff),
            Mutation(name: "image ids swapped", fault: .imageIdsSwapped),
            Mutation(name: "no dynamic shift", fault: .noDynamicShift),
            Mutation(name: "skipped bias", fault: .skippedBias),
            Mutation(name: "VAE shift dropped", fault: .vaeShiftDropped, comparesImage: true),
        ]
        for mutation in mutations {
            let (run, expected) = try run(model: "tiny-flux-dev", reference: "pipeline_dev_96x160", faults: mutation.fault)
            let error = mutation.comparesImage ? run.image.relativeError(to: expected.image)
                : run.finalLatents.relativeError(to: expected.finalLatents)
            let tolerance = mutation.comparesImage ? PipelineTests.imageTolerance : PipelineTests.latentTolerance
            XCTAssertGreaterThan(error, 10 * tolerance, "mutation '\(mutation.name)' moved the output by only \(error)")
        }
    }

    func testSeededNoiseIsReproducible() throws {
        let pipeline = try RandomModel.tiny.pipeline(backend: CPUBackend())
        var options = GenerationOptions()
        options.width = 64
        options.height = 48 * 2
        options.seed = 11
        options.batch = 2
        let a = pipeline.initialNoise(options)
        XCTAssertEqual(a.shape, [2, 16, 12, 8])
        XCTAssertEqual(a, pipeline.initialNoise(options))
        options.seed = 12
        options.batch = 1
        // Batch item 1 of seed 11 is seed 12's first item.
        XCTAssertEqual(Array(a.data[(16 * 12 * 8)...]), pipeline.initialNoise(options).data)
    }

    func testPackingRoundTrips() {
        var noise = NoiseGenerator(seed: 5)
        let latents = HostTensor(shape: [2, 16, 6, 10], data: noise.normal(2 * 16 * 60))
        let packed = LatentPacking.pack(latents)
        XCTAssertEqual(packed.shape, [2, 15, 64])
        // Token (row 1, column 2), channel c = 3, dy = 1, dx = 0 → latent (c 3, y 2·1+1, x 2·2+0).
        let token = 1 * 5 + 2
        let lane = 3 * 4 + 1 * 2 + 0
        let pixel = (3 * 6 + 2 * 1 + 1) * 10 + 2 * 2 + 0
        XCTAssertEqual(packed.data[token * 64 + lane], latents.data[pixel])
        XCTAssertEqual(LatentPacking.unpack(packed, height: 6, width: 10), latents)
    }
}

extension PipelineTests {
    /// A batch of two (seeds S and S+1) computes exactly what two single runs with those seeds compute.
    func testBatchItemsEqualSingleRuns() throws {
        let pipeline = try RandomModel.tiny.pipeline(backend: CPUBackend())
        var options = GenerationOptions()
        (options.width, options.height, options.steps, options.seed, options.batch) = (64, 96, 2, 21, 2)
        let prompt = RandomModel.tiny.promptEmbeddings(for: "batch", batch: 2)
        let batched = try pipeline.denoise(latents: pipeline.initialNoise(options), prompt: prompt, options: options).batchItems()
        options.batch = 1
        let single = RandomModel.tiny.promptEmbeddings(for: "batch", batch: 1)
        for item in 0..<2 {
            options.seed = 21 + UInt64(item)
            let alone = try pipeline.denoise(latents: pipeline.initialNoise(options), prompt: single, options: options)
            assertClose(batched[item], alone.batchItems()[0], tolerance: 1e-6, "batch item \(item)")
        }
    }
}
