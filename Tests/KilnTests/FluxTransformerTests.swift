import KilnBackends
import KilnCore
import KilnModels
import KilnPipeline
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
        let textTokens = try ref.tensor("encoder_hidden_states").shape[1]
        let rope = model.rotary(textTokens: textTokens, rows: Int(ref.metadata["latent_height"]!)! / 2,
                                columns: Int(ref.metadata["latent_width"]!)! / 2, backend)
        assertClose(rope.joint.cos, try ref.tensor("rope_cos"), tolerance: 1e-6, "\(name) rope cos")
        assertClose(rope.joint.sin, try ref.tensor("rope_sin"), tolerance: 1e-6, "\(name) rope sin")
        assertClose(model.embedImage(try ref.tensor("hidden_states"), backend), try ref.tensor("double.0.img_in"),
                    tolerance: 1e-5, "\(name) image embedding")
        assertClose(model.embedText(try ref.tensor("encoder_hidden_states"), backend), try ref.tensor("double.0.txt_in"),
                    tolerance: 1e-5, "\(name) text embedding")

        let outputs = try BlockParity.run(model, reference: ref, backend)
        XCTAssertEqual(outputs.count, 2 + 2 * (model.doubleBlocks.count + model.singleBlocks.count))
        for (key, value) in outputs.sorted(by: { $0.key < $1.key }) {
            assertClose(value, try ref.tensor(key), tolerance: key == "temb" ? 1e-5 : 1e-4, "\(name) \(key)")
        }
    }

    func testDevDiffusersLayout() throws { try check(model: "tiny-flux-dev", reference: "transformer_dev") }
    func testDevBFLLayout() throws { try check(model: "bfl/flux1-tiny-dev.safetensors", reference: "transformer_dev") }
    func testSchnellDiffusersLayout() throws { try check(model: "tiny-flux-schnell", reference: "transformer_schnell") }
    func testSchnellBFLLayout() throws { try check(model: "bfl/flux1-tiny-schnell.safetensors", reference: "transformer_schnell") }

    /// Without device streams, `concurrently` runs the first body, then the second, and returns their results in order
    /// (the double blocks above run their two streams through it).
    func testConcurrentlyRunsBothBodiesInOrder() {
        let x = HostTensor(shape: [2, 3], data: [1, 2, 3, 4, 5, 6])
        var ran: [String] = []
        let (doubled, shifted) = backend.concurrently({ () -> HostTensor in
            ran.append("first")
            return backend.affine(x, scale: 2, shift: 0)
        }, { () -> HostTensor in
            ran.append("second")
            return backend.affine(x, scale: 1, shift: 1)
        })
        XCTAssertEqual(ran, ["first", "second"])
        XCTAssertEqual(doubled.data, [2, 4, 6, 8, 10, 12])
        XCTAssertEqual(shifted.data, [2, 3, 4, 5, 6, 7])
    }

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
