import KilnBackends
import KilnCore

/// The FLUX.1 transformer (BFL's `Flux` model): embedders, double-stream blocks, single-stream blocks and the
/// final adaLN layer, written once over the op interface. Weights use the BFL names; diffusers checkpoints are
/// mapped onto them at load (`FluxWeightNames`).
public struct FluxTransformer<B: Backend> {
    public let config: FluxConfig
    let imageIn: Linear<B>
    let textIn: Linear<B>
    let timeIn: MLPEmbedder<B>
    let vectorIn: MLPEmbedder<B>
    let guidanceIn: MLPEmbedder<B>?
    public let doubleBlocks: [DoubleStreamBlock<B>]
    public let singleBlocks: [SingleStreamBlock<B>]
    let finalModulation: Linear<B>
    let finalLinear: Linear<B>
    /// Deliberate wiring bugs for mutation tests; empty in normal use.
    public var faults: Faults = []

    /// Loads every weight through `loader` (canonical BFL names), checking shapes against `config`.
    public init(config: FluxConfig, loader: WeightLoader<B>) throws {
        self.config = config
        let h = config.hidden
        imageIn = try loader.linear("img_in", in: config.inChannels, out: h)
        textIn = try loader.linear("txt_in", in: config.jointDim, out: h)
        timeIn = try MLPEmbedder(loader.scoped("time_in"), inputs: 256, hidden: h)
        vectorIn = try MLPEmbedder(loader.scoped("vector_in"), inputs: config.pooledDim, hidden: h)
        guidanceIn = config.guidanceEmbed ? try MLPEmbedder(loader.scoped("guidance_in"), inputs: 256, hidden: h) : nil
        doubleBlocks = try (0..<config.doubleBlocks).map { try DoubleStreamBlock(loader.scoped("double_blocks.\($0)"), config: config) }
        singleBlocks = try (0..<config.singleBlocks).map { try SingleStreamBlock(loader.scoped("single_blocks.\($0)"), config: config) }
        finalModulation = try loader.linear("final_layer.adaLN_modulation.1", in: h, out: 2 * h)
        finalLinear = try loader.linear("final_layer.linear", in: h, out: config.inChannels)
    }

    /// The conditioning vector `[B, hidden]` from timesteps (t/1000 values, one per batch item), guidance
    /// (dev only) and pooled text `[B, pooledDim]`.
    public func conditioning(timestep: [Float], guidance: [Float]?, pooled: B.Tensor, _ backend: B) -> B.Tensor {
        var vec = timeIn(backend.tensor(FluxEmbeddings.timestep(timestep)), backend)
        if let guidanceIn {
            let values = guidance ?? [Float](repeating: 0, count: timestep.count)
            vec = backend.add(vec, guidanceIn(backend.tensor(FluxEmbeddings.timestep(values)), backend))
        }
        return backend.add(vec, vectorIn(pooled, backend))
    }

    /// Rotary tables for `textTokens` text tokens followed by a packed latent of `rows × columns` tokens.
    public func rotary(textTokens: Int, rows: Int, columns: Int, _ backend: B) -> FluxRotary<B.Tensor> {
        let ids = FluxEmbeddings.textIds(tokens: textTokens)
            + FluxEmbeddings.imageIds(rows: rows, columns: columns, swapped: faults.contains(.imageIdsSwapped))
        let table = FluxEmbeddings.rotary(ids: ids, axesDim: config.axesDim, theta: config.theta)
        let cos = backend.tensor(table.cos)
        let sin = backend.tensor(table.sin)
        let total = ids.count
        func part(_ range: Range<Int>) -> RotaryTable<B.Tensor> {
            RotaryTable(cos: backend.slice(cos, axis: 0, range), sin: backend.slice(sin, axis: 0, range))
        }
        return FluxRotary(joint: RotaryTable(cos: cos, sin: sin), text: part(0..<textTokens), image: part(textTokens..<total))
    }

    /// Embeds packed latents `[B, N, inChannels]`.
    public func embedImage(_ latents: B.Tensor, _ backend: B) -> B.Tensor {
        if faults.contains(.skippedBias) {
            return backend.linear(latents, weight: imageIn.weight, bias: nil)
        }
        return imageIn(latents, backend)
    }

    /// Embeds T5 states `[B, T, jointDim]`.
    public func embedText(_ states: B.Tensor, _ backend: B) -> B.Tensor { textIn(states, backend) }

    /// The final adaLN layer and projection of image tokens `[B, N, hidden]` to `[B, N, inChannels]`.
    public func finalLayer(_ x: B.Tensor, vec: B.Tensor, _ backend: B) -> B.Tensor {
        let parts = backend.chunk(finalModulation(backend.activation(vec, .silu), backend), 2)
        let normed = backend.layerNormModulate(x, shift: parts[0], scale: parts[1], eps: 1e-6)
        return finalLinear(normed, backend)
    }

    /// Predicts the flow (velocity) for packed latents `[B, rows·columns, inChannels]` given T5 states
    /// `[B, T, jointDim]`, pooled CLIP `[B, pooledDim]`, timesteps as t/1000 and guidance scales.
    public func callAsFunction(latents: B.Tensor, text: B.Tensor, pooled: B.Tensor, timestep: [Float], guidance: [Float]?,
                               rows: Int, columns: Int, _ backend: B) -> B.Tensor {
        let vec = conditioning(timestep: timestep, guidance: guidance, pooled: pooled, backend)
        let textTokens = backend.shape(text)[1]
        let rope = faults.contains(.ropeOff) ? nil : rotary(textTokens: textTokens, rows: rows, columns: columns, backend)
        var image = embedImage(latents, backend)
        var txt = embedText(text, backend)
        for block in doubleBlocks {
            (image, txt) = block(image: image, text: txt, vec: vec, rope: rope, backend)
        }
        var joint = backend.concat([txt, image], axis: 1)
        for block in singleBlocks {
            joint = block(joint, vec: vec, rope: rope?.joint, backend)
        }
        let total = backend.shape(joint)[1]
        return finalLayer(backend.slice(joint, axis: 1, textTokens..<total), vec: vec, backend)
    }
}
