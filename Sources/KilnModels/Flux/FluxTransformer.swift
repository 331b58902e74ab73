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
        let loader = loader.quantizingLinears()
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
        let guidanceEmbedding = guidanceIn == nil ? nil
            : backend.tensor(FluxEmbeddings.timestep(guidance ?? [Float](repeating: 0, count: timestep.count)))
        return conditioning(timeEmbedding: backend.tensor(FluxEmbeddings.timestep(timestep)), guidanceEmbedding: guidanceEmbedding,
                            pooled: pooled, backend)
    }

    /// The conditioning vector from sinusoidal embeddings already on the backend (`FluxEmbeddings.timestep` of the
    /// timesteps and, for dev, of the guidance scales, `[B, 256]`): device work only.
    public func conditioning(timeEmbedding: B.Tensor, guidanceEmbedding: B.Tensor?, pooled: B.Tensor, _ backend: B) -> B.Tensor {
        var vec = timeIn(timeEmbedding, backend)
        if let guidanceIn, let guidanceEmbedding { vec = backend.add(vec, guidanceIn(guidanceEmbedding, backend)) }
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

    /// The rotary tables the forward pass uses: `rotary(...)`, or none under the `ropeOff` fault.
    public func positionEmbedding(textTokens: Int, rows: Int, columns: Int, _ backend: B) -> FluxRotary<B.Tensor>? {
        faults.contains(.ropeOff) ? nil : rotary(textTokens: textTokens, rows: rows, columns: columns, backend)
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

    /// Every block's modulation, and the final layer's shift and scale, for conditioning vectors `vec` `[R, hidden]`:
    /// one GEMM per block over all R rows (e.g. every step of a run at once).
    public func modulations(_ vec: B.Tensor, _ backend: B) -> FluxModulations<B.Tensor> {
        let final = backend.chunk(finalModulation(backend.activation(vec, .silu), backend), 2)
        return FluxModulations(double: doubleBlocks.map { $0.modulation(vec, backend) },
                               single: singleBlocks.map { $0.modulation(vec, backend) },
                               final: (shift: final[0], scale: final[1]))
    }

    /// The final adaLN layer and projection of image tokens `[B, N, hidden]` to `[B, N, inChannels]`.
    public func finalLayer(_ x: B.Tensor, shift: B.Tensor, scale: B.Tensor, _ backend: B) -> B.Tensor {
        finalLinear(backend.layerNormModulate(x, shift: shift, scale: scale, eps: 1e-6, feedsQuantizableLinears: true), backend)
    }

    /// One step's flow prediction for packed latents `[B, rows·columns, inChannels]`, from text states already
    /// embedded by `embedText` and this step's modulations.
    public func step(latents: B.Tensor, text: B.Tensor, modulations: FluxModulations<B.Tensor>,
                     rope: FluxRotary<B.Tensor>?, _ backend: B) -> B.Tensor {
        let textTokens = backend.shape(text)[1]
        var image = embedImage(latents, backend)
        var txt = text
        for (block, modulation) in zip(doubleBlocks, modulations.double) {
            (image, txt) = block(image: image, text: txt, modulation: modulation, rope: rope, backend)
        }
        var joint = backend.concat([txt, image], axis: 1)
        for (block, modulation) in zip(singleBlocks, modulations.single) {
            joint = block(joint, modulation: modulation, rope: rope?.joint, backend)
        }
        let total = backend.shape(joint)[1]
        return finalLayer(backend.slice(joint, axis: 1, textTokens..<total), shift: modulations.final.shift,
                          scale: modulations.final.scale, backend)
    }

    /// Predicts the flow (velocity) for packed latents `[B, rows·columns, inChannels]` given T5 states
    /// `[B, T, jointDim]`, pooled CLIP `[B, pooledDim]`, timesteps as t/1000 and guidance scales.
    public func callAsFunction(latents: B.Tensor, text: B.Tensor, pooled: B.Tensor, timestep: [Float], guidance: [Float]?,
                               rows: Int, columns: Int, _ backend: B) -> B.Tensor {
        let vec = conditioning(timestep: timestep, guidance: guidance, pooled: pooled, backend)
        let textTokens = backend.shape(text)[1]
        let rope = positionEmbedding(textTokens: textTokens, rows: rows, columns: columns, backend)
        return step(latents: latents, text: embedText(text, backend), modulations: modulations(vec, backend), rope: rope, backend)
    }
}

/// All modulation vectors of one transformer evaluation: per double block four triples (image attention, image MLP,
/// text attention, text MLP), per single block one, and the final layer's shift and scale.
public struct FluxModulations<Tensor> {
    public var double: [[ModulationVectors<Tensor>]]
    public var single: [ModulationVectors<Tensor>]
    public var final: (shift: Tensor, scale: Tensor)

    /// The modulations of rows `range` (one step's batch out of all steps computed at once).
    public func rows<B: Backend>(_ range: Range<Int>, _ backend: B) -> FluxModulations where B.Tensor == Tensor {
        FluxModulations(double: double.map { $0.map { $0.rows(range, backend) } },
                        single: single.map { $0.rows(range, backend) },
                        final: (backend.slice(final.shift, axis: 0, range), backend.slice(final.scale, axis: 0, range)))
    }
}
