import KilnBackends
import KilnCore
import KilnModels
import KilnPipeline
import KilnText
import XCTest

/// A backend with CUDA-graph semantics on the CPU: tensors are buffers with fixed identity; `capture` records the
/// buffers the body produces, and `replay` runs the body again with every op writing into the buffer it produced during
/// the capture, so only values written into the inputs (`overwrite`) change the result. Host transfers inside a capture
/// or a replay are counted: a graph must contain device work only.
final class GraphEmulatingBackend: Backend {
    final class Buffer {
        var value: HostTensor
        init(_ value: HostTensor) { self.value = value }
    }
    typealias Tensor = Buffer

    final class Graph: DeviceGraph {
        let backend: GraphEmulatingBackend
        let body: () throws -> Void
        let buffers: [Buffer]
        init(backend: GraphEmulatingBackend, body: @escaping () throws -> Void, buffers: [Buffer]) {
            (self.backend, self.body, self.buffers) = (backend, body, buffers)
        }
        func replay() throws {
            backend.replaying = (buffers, 0)
            defer { backend.replaying = nil }
            try body()
            backend.replays += 1
        }
    }

    let cpu = CPUBackend()
    var recording: [Buffer]?
    var replaying: (buffers: [Buffer], next: Int)?
    var captures = 0, replays = 0, hostTransfersInGraphs = 0
    /// Like CUDA's pool: every capture keeps memory for good, so eager runs before it no longer size the next capture.
    var memoryGeneration: Int { captures }
    var inGraph: Bool { recording != nil || replaying != nil }
    var name: String { "graph-emulating cpu" }

    func make(_ value: HostTensor) -> Buffer {
        if var state = replaying {
            let buffer = state.buffers[state.next]
            state.next += 1
            replaying = state
            precondition(buffer.value.shape == value.shape, "replay produced another shape")
            buffer.value = value
            return buffer
        }
        let buffer = Buffer(value)
        recording?.append(buffer)
        return buffer
    }

    func capture(_ body: @escaping () throws -> Void) throws -> DeviceGraph? {
        recording = []
        defer { recording = nil }
        try body()
        captures += 1
        return Graph(backend: self, body: body, buffers: recording!)
    }

    func overwrite(_ tensor: Buffer, with host: HostTensor) throws {
        XCTAssertEqual(tensor.value.shape, host.shape)
        tensor.value = host
    }

    func tensor(_ host: HostTensor) -> Buffer {
        if inGraph { hostTransfersInGraphs += 1 }
        return make(host)
    }
    func weight(_ host: HostTensor, role: WeightRole) -> Buffer { tensor(host) }
    func host(_ tensor: Buffer) -> HostTensor {
        if inGraph { hostTransfersInGraphs += 1 }
        return tensor.value
    }
    func shape(_ tensor: Buffer) -> [Int] { tensor.value.shape }
    func reshape(_ x: Buffer, _ shape: [Int]) -> Buffer { make(cpu.reshape(x.value, shape)) }
    func concat(_ parts: [Buffer], axis: Int) -> Buffer { make(cpu.concat(parts.map(\.value), axis: axis)) }
    func slice(_ x: Buffer, axis: Int, _ range: Range<Int>) -> Buffer { make(cpu.slice(x.value, axis: axis, range)) }
    func add(_ a: Buffer, _ b: Buffer) -> Buffer { make(cpu.add(a.value, b.value)) }
    func addScaled(_ x: Buffer, _ y: Buffer, alpha: Float) -> Buffer { make(cpu.addScaled(x.value, y.value, alpha: alpha)) }
    func affine(_ x: Buffer, scale a: Float, shift b: Float) -> Buffer { make(cpu.affine(x.value, scale: a, shift: b)) }
    func activation(_ x: Buffer, _ kind: Activation) -> Buffer { make(cpu.activation(x.value, kind)) }
    func modulate(_ x: Buffer, shift: Buffer, scale: Buffer) -> Buffer { make(cpu.modulate(x.value, shift: shift.value, scale: scale.value)) }
    func scaleChannels(_ x: Buffer, by gate: Buffer) -> Buffer { make(cpu.scaleChannels(x.value, by: gate.value)) }
    func linear(_ x: Buffer, weight: Buffer, bias: Buffer?, activation: Activation) -> Buffer {
        make(cpu.linear(x.value, weight: weight.value, bias: bias?.value, activation: activation))
    }
    func attention(q: Buffer, k: Buffer, v: Buffer, heads: Int, scale: Float?, keyMask: Buffer?) -> Buffer {
        make(cpu.attention(q: q.value, k: k.value, v: v.value, heads: heads, scale: scale, keyMask: keyMask?.value))
    }
    func attention(q: Buffer, k: Buffer, v: Buffer, heads: Int, scale: Float, bias: Buffer) -> Buffer {
        make(cpu.attention(q: q.value, k: k.value, v: v.value, heads: heads, scale: scale, bias: bias.value))
    }
    func layerNorm(_ x: Buffer, weight: Buffer?, bias: Buffer?, eps: Float) -> Buffer {
        make(cpu.layerNorm(x.value, weight: weight?.value, bias: bias?.value, eps: eps))
    }
    func rmsNorm(_ x: Buffer, weight: Buffer, eps: Float) -> Buffer { make(cpu.rmsNorm(x.value, weight: weight.value, eps: eps)) }
    func groupNorm(_ x: Buffer, groups: Int, weight: Buffer, bias: Buffer, eps: Float, silu: Bool) -> Buffer {
        make(cpu.groupNorm(x.value, groups: groups, weight: weight.value, bias: bias.value, eps: eps, silu: silu))
    }
    func rope(_ x: Buffer, _ table: RotaryTable<Buffer>) -> Buffer {
        make(cpu.rope(x.value, RotaryTable(cos: table.cos.value, sin: table.sin.value)))
    }
    func conv2d(_ x: Buffer, weight: Buffer, bias: Buffer?, stride: Int, padding: Padding) -> Buffer {
        make(cpu.conv2d(x.value, weight: weight.value, bias: bias?.value, stride: stride, padding: padding))
    }
    func upsampleNearest2x(_ x: Buffer) -> Buffer { make(cpu.upsampleNearest2x(x.value)) }
}

final class GraphReplayTests: XCTestCase {
    /// Two shapes interleaved: a shape whose eager run predates another shape's capture runs eagerly again before it is
    /// captured; every result still equals the eager CPU pipeline's.
    func testInterleavedShapesRecaptureSafely() throws {
        let files = try ModelFiles(path: Fixtures.path("tiny-flux-dev"))
        let emulated = GraphEmulatingBackend()
        let graphPipeline = try TextToImagePipeline(files: files, backend: emulated)
        let eager = try TextToImagePipeline(files: files, backend: CPUBackend())
        let ref = try Fixtures.reference("pipeline_dev_96x160")
        let prompt = PromptEmbeddings(sequence: try ref.tensor("prompt_embeds"), pooled: try ref.tensor("pooled_prompt_embeds"))
        var noise = NoiseGenerator(seed: 4)
        var modes: [String] = []
        for run in 0..<6 {
            var options = GenerationOptions()
            (options.height, options.width, options.steps) = run % 2 == 0 ? (96, 160, 2) : (64, 64, 2)
            let latents = HostTensor(shape: [1, 16, options.height / 8, options.width / 8],
                                     data: noise.normal(16 * (options.height / 8) * (options.width / 8)))
            XCTAssertEqual(try graphPipeline.denoise(latents: latents, prompt: prompt, options: options),
                           try eager.denoise(latents: latents, prompt: prompt, options: options), "run \(run)")
            modes.append(graphPipeline.lastLoop.rawValue)
        }
        XCTAssertEqual(modes, ["eager", "eager", "captured", "eager", "replayed", "captured"])
        XCTAssertEqual(emulated.hostTransfersInGraphs, 0)
    }

    /// The denoising loop runs eagerly once per shape, is captured on the second run and replayed from then on; each
    /// replay computes exactly what the eager CPU pipeline computes for its inputs, and no host transfer happens inside.
    func testLoopIsCapturedOnceAndReplayedWithNewInputs() throws {
        let files = try ModelFiles(path: Fixtures.path("tiny-flux-dev"))
        let emulated = GraphEmulatingBackend()
        let graphPipeline = try TextToImagePipeline(files: files, backend: emulated)
        let eager = try TextToImagePipeline(files: files, backend: CPUBackend())
        let ref = try Fixtures.reference("pipeline_dev_96x160")
        var options = GenerationOptions()
        (options.height, options.width, options.steps) = (96, 160, 3)
        let prompt = PromptEmbeddings(sequence: try ref.tensor("prompt_embeds"), pooled: try ref.tensor("pooled_prompt_embeds"))
        var noise = NoiseGenerator(seed: 9)
        for run in 0..<4 {
            let latents = HostTensor(shape: [1, 16, 12, 20], data: noise.normal(16 * 12 * 20))
            options.guidance = 2 + Float(run)
            let shifted = PromptEmbeddings(sequence: prompt.sequence.reshaped(prompt.sequence.shape),
                                           pooled: HostTensor(shape: prompt.pooled.shape, data: prompt.pooled.data.map { $0 + Float(run) / 10 }))
            let replayed = try graphPipeline.denoise(latents: latents, prompt: shifted, options: options)
            let expected = try eager.denoise(latents: latents, prompt: shifted, options: options)
            XCTAssertEqual(replayed, expected, "run \(run)")
        }
        XCTAssertEqual(emulated.captures, 1)
        XCTAssertEqual(emulated.replays, 3)
        XCTAssertEqual(emulated.hostTransfersInGraphs, 0)
    }

    /// The VAE decoder, like the loop: eager for a shape's first decode, captured on the next, replayed after; every
    /// image equals the eager CPU decode of its latents, with no host transfer inside the graph.
    func testDecoderIsCapturedAndReplayed() throws {
        let files = try ModelFiles(path: Fixtures.path("tiny-flux-dev"))
        let emulated = GraphEmulatingBackend()
        let graphPipeline = try TextToImagePipeline(files: files, backend: emulated)
        let eager = try TextToImagePipeline(files: files, backend: CPUBackend())
        var noise = NoiseGenerator(seed: 11)
        var modes: [String] = []
        for run in 0..<4 {
            let latents = HostTensor(shape: [1, 16, 8, 12], data: noise.normal(16 * 8 * 12))
            XCTAssertEqual(graphPipeline.decode(latents), eager.decode(latents), "run \(run)")
            modes.append(graphPipeline.lastDecode.rawValue)
        }
        XCTAssertEqual(modes, ["eager", "captured", "replayed", "replayed"])
        XCTAssertEqual(emulated.captures, 1)
        XCTAssertEqual(emulated.hostTransfersInGraphs, 0)
    }

    /// CLIP-L's and T5's layer stacks, like the loop: eager for a sequence length's first prompt, captured on the
    /// next run whose pool is unchanged since, replayed with later prompts' tokens; every embedding equals the eager
    /// CPU encoders', with no host transfer inside the graphs.
    func testTextEncodersAreCapturedAndReplayed() throws {
        let folder = Fixtures.path("tiny-flux-dev-text")
        let emulated = GraphEmulatingBackend()
        let graphEncoders = try TextEncoders.load(modelFolder: folder, backend: emulated)
        let eager = try TextEncoders.load(modelFolder: folder, backend: CPUBackend())
        for prompt in ["a red kiln at dusk", "two cats on a sofa", "a lighthouse in fog, 35mm photo", "a red kiln at dusk"] {
            let replayed = try graphEncoders.encodeToHost(prompt: prompt, maxLength: 32, cached: false)
            let expected = try eager.encodeToHost(prompt: prompt, maxLength: 32, cached: false)
            XCTAssertEqual(replayed.promptEmbeds, expected.promptEmbeds, prompt)
            XCTAssertEqual(replayed.pooled, expected.pooled, prompt)
        }
        // CLIP: eager, captured, replayed, replayed. T5: eager, eager again (CLIP's capture took memory since its first
        // run), captured, replayed. Each capture is replayed once to produce its result.
        XCTAssertEqual(emulated.captures, 2)
        XCTAssertEqual(emulated.replays, 5)
        XCTAssertEqual(emulated.hostTransfersInGraphs, 0)
    }
}
