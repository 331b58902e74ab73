import KilnBackends
import KilnCore
import KilnModels
import XCTest

/// The FLUX transformer on the CPU against diffusers (fp32) on the tiny fixtures: every block fed the reference's
/// input for that block, and the whole forward pass, in both file layouts.
final class FluxTransformerTests: XCTestCase {
    let backend = CPUBackend()

    func load(_ path: String) throws -> FluxTransformer<CPUBackend> {
        let files = try ModelFiles(path: Fixtures.path(path))
        return try FluxTransformer(config: files.transformerConfig, loader: WeightLoader(backend: backend, source: files.transformer))
    }

    func check(model path: String, reference name: String) throws {
        let model = try load(path)
        let ref = try Fixtures.reference(name)
        let metadata = ref.metadata
        let rows = Int(metadata["latent_height"]!)! / 2
        let columns = Int(metadata["latent_width"]!)! / 2
        let timestep = try ref.tensor("timestep").data
        let guidance = ref.contains("guidance") ? try ref.tensor("guidance").data : nil
        let textTokens = try ref.tensor("encoder_hidden_states").shape[1]

        let vec = model.conditioning(timestep: timestep, guidance: guidance, pooled: try ref.tensor("pooled_projections"), backend)
        assertClose(vec, try ref.tensor("temb"), tolerance: 1e-5, "\(name) conditioning")

        let rope = model.rotary(textTokens: textTokens, rows: rows, columns: columns, backend)
        assertClose(rope.joint.cos, try ref.tensor("rope_cos"), tolerance: 1e-6, "\(name) rope cos")
        assertClose(rope.joint.sin, try ref.tensor("rope_sin"), tolerance: 1e-6, "\(name) rope sin")

        assertClose(model.embedImage(try ref.tensor("hidden_states"), backend), try ref.tensor("double.0.img_in"),
                    tolerance: 1e-5, "\(name) image embedding")
        assertClose(model.embedText(try ref.tensor("encoder_hidden_states"), backend), try ref.tensor("double.0.txt_in"),
                    tolerance: 1e-5, "\(name) text embedding")

        let modulations = model.modulations(vec, backend)
        for (i, block) in model.doubleBlocks.enumerated() {
            let out = block(image: try ref.tensor("double.\(i).img_in"), text: try ref.tensor("double.\(i).txt_in"),
                            modulation: modulations.double[i], rope: rope, backend)
            assertClose(out.image, try ref.tensor("double.\(i).img_out"), tolerance: 1e-4, "\(name) double block \(i) image")
            assertClose(out.text, try ref.tensor("double.\(i).txt_out"), tolerance: 1e-4, "\(name) double block \(i) text")
        }
        for (i, block) in model.singleBlocks.enumerated() {
            let joint = backend.concat([try ref.tensor("single.\(i).txt_in"), try ref.tensor("single.\(i).img_in")], axis: 1)
            let out = block(joint, modulation: modulations.single[i], rope: rope.joint, backend)
            let total = out.shape[1]
            assertClose(backend.slice(out, axis: 1, 0..<textTokens), try ref.tensor("single.\(i).txt_out"),
                        tolerance: 1e-4, "\(name) single block \(i) text")
            assertClose(backend.slice(out, axis: 1, textTokens..<total), try ref.tensor("single.\(i).img_out"),
                        tolerance: 1e-4, "\(name) single block \(i) image")
        }
        let output = model(latents: try ref.tensor("hidden_states"), text: try ref.tensor("encoder_hidden_states"),
                           pooled: try ref.tensor("pooled_projections"), timestep: timestep, guidance: guidance,
                           rows: rows, columns: columns, backend)
        assertClose(output, try ref.tensor("output"), tolerance: 1e-4, "\(name) output")
    }

    func testDevDiffusersLayout() throws { try check(model: "tiny-flux-dev", reference: "transformer_dev") }
    func testDevBFLLayout() throws { try check(model: "bfl/flux1-tiny-dev.safetensors", reference: "transformer_dev") }
    func testSchnellDiffusersLayout() throws { try check(model: "tiny-flux-schnell", reference: "transformer_schnell") }
    func testSchnellBFLLayout() throws { try check(model: "bfl/flux1-tiny-schnell.safetensors", reference: "transformer_schnell") }

    func testConfigsFromBothLayoutsAgree() throws {
        for variant in ["dev", "schnell"] {
            let diffusers = try ModelFiles(path: Fixtures.path("tiny-flux-\(variant)"))
            let bfl = try ModelFiles(path: Fixtures.path("bfl/flux1-tiny-\(variant).safetensors"))
            XCTAssertEqual(diffusers.transformerConfig, bfl.transformerConfig)
            XCTAssertEqual(diffusers.vaeConfig, bfl.vaeConfig)
            XCTAssertEqual(diffusers.variant, variant)
            XCTAssertEqual(bfl.variant, variant)
        }
    }

    /// The name list `inspect` and the model's loader must agree: the model reads exactly the expected tensors.
    func testExpectedNamesMatchWhatTheModelReads() throws {
        final class Recorder: WeightSource {
            var names: [String] = []
            let inner = RandomWeights(seed: 3)
            var origin: String { "recorder" }
            func tensor(_ name: String, shape: [Int]) throws -> HostTensor {
                names.append(name)
                return try inner.tensor(name, shape: shape)
            }
        }
        for config in [try ModelFiles(path: Fixtures.path("tiny-flux-dev")).transformerConfig,
                       try ModelFiles(path: Fixtures.path("tiny-flux-schnell")).transformerConfig] {
            let recorder = Recorder()
            _ = try FluxTransformer(config: config, loader: WeightLoader(backend: backend, source: recorder))
            XCTAssertEqual(Set(recorder.names), Set(FluxWeightNames.expected(config).map(\.name)))
            XCTAssertEqual(recorder.names.count, FluxWeightNames.expected(config).count)
        }
        XCTAssertEqual(FluxConfig.dev.parameterCount, FluxWeightNames.expected(.dev).reduce(0) { $0 + $1.shape.reduce(1, *) })
    }
}

final class FluxBudgetTests: XCTestCase {
    /// DESIGN.md §4: one FLUX.1 step at 1024² (4096 + 512 tokens) is ≈ 59.4 TFLOP of linear layers and
    /// ≈ 14.9 TFLOP of attention, ≈ 74 TFLOP in all.
    func testStepFLOPsMatchTheBudget() {
        let flops = FluxConfig.dev.stepFLOPs(imageTokens: 4096, textTokens: 512)
        XCTAssertEqual(flops / 1e12, 74.3, accuracy: 0.3)
        XCTAssertEqual(FluxConfig.dev.parameterCount, 11_901_408_320)
    }
}
