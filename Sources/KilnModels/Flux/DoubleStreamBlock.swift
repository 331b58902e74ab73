import KilnBackends

/// One stream (image or text) of a double-stream block: its modulation, attention projections, norms and MLP.
struct StreamWeights<B: Backend> {
    let modulation: Modulation<B>
    let qkv: Linear<B>
    let queryNorm: B.Tensor
    let keyNorm: B.Tensor
    let projection: Linear<B>
    let mlpIn: Linear<B>
    let mlpOut: Linear<B>

    init(_ loader: WeightLoader<B>, stream: String, config: FluxConfig) throws {
        let h = config.hidden
        modulation = try Modulation(loader.scoped("\(stream)_mod"), hidden: h, count: 2)
        let attention = loader.scoped("\(stream)_attn")
        qkv = try attention.linear("qkv", in: h, out: 3 * h)
        queryNorm = try attention.vector("norm.query_norm.scale", count: config.headDim)
        keyNorm = try attention.vector("norm.key_norm.scale", count: config.headDim)
        projection = try attention.linear("proj", in: h, out: h)
        mlpIn = try loader.linear("\(stream)_mlp.0", in: h, out: config.mlpHidden)
        mlpOut = try loader.linear("\(stream)_mlp.2", in: config.mlpHidden, out: h)
    }
}

/// A FLUX double-stream block: image and text tokens keep their own weights and meet in one joint attention.
public struct DoubleStreamBlock<B: Backend> {
    let image: StreamWeights<B>
    let text: StreamWeights<B>
    let heads: Int

    /// Loads `double_blocks.N` (canonical BFL names).
    public init(_ loader: WeightLoader<B>, config: FluxConfig) throws {
        image = try StreamWeights(loader, stream: "img", config: config)
        text = try StreamWeights(loader, stream: "txt", config: config)
        heads = config.heads
    }

    /// The block's modulation for conditioning vectors `vec` `[R, hidden]`: image attention, image MLP, text attention,
    /// text MLP. It depends only on the timestep, guidance and pooled text, so all steps' are computed before the loop.
    public func modulation(_ vec: B.Tensor, _ backend: B) -> [ModulationVectors<B.Tensor>] {
        image.modulation(vec, backend) + text.modulation(vec, backend)
    }

    /// Runs the block on image tokens `[B, N, hidden]` and text tokens `[B, T, hidden]` with this step's modulation.
    public func callAsFunction(image img: B.Tensor, text txt: B.Tensor, modulation: [ModulationVectors<B.Tensor>],
                               rope: FluxRotary<B.Tensor>?, _ backend: B) -> (image: B.Tensor, text: B.Tensor) {
        let imageMod = Array(modulation[0..<2])
        let textMod = Array(modulation[2..<4])

        // Both streams' adaLN in one op (one launch on CUDA: the text rows alone are too few to fill the GPU).
        func normed(_ image: B.Tensor, _ imageMod: ModulationVectors<B.Tensor>, _ text: B.Tensor,
                    _ textMod: ModulationVectors<B.Tensor>) -> [B.Tensor] {
            backend.layerNormModulate([ModulatedNormInput(image, shift: imageMod.shift, scale: imageMod.scale),
                                       ModulatedNormInput(text, shift: textMod.shift, scale: textMod.scale)],
                                      eps: 1e-6, feedsQuantizableLinears: true)
        }
        func projectQKV(_ normed: B.Tensor, _ stream: StreamWeights<B>, _ rope: RotaryTable<B.Tensor>?) -> QKVStream<B.Tensor> {
            QKVStream(qkv: stream.qkv(normed, backend), queryNorm: stream.queryNorm, keyNorm: stream.keyNorm, rope: rope)
        }
        let textTokens = backend.shape(txt)[1]
        // The streams meet only in attention: before and after it, the short text work can fill the SMs the image's
        // GEMMs leave idle (image first, as the longer one).
        let attentionNormed = normed(img, imageMod[0], txt, textMod[0])
        let (imageQKV, textQKV) = backend.concurrently({ projectQKV(attentionNormed[0], image, rope?.image) },
                                                       { projectQKV(attentionNormed[1], text, rope?.text) })
        // One joint sequence, text first; rotary embedding is per position, so each stream takes its own rows of the table.
        let (q, k, v) = backend.attentionInputs([textQKV, imageQKV], eps: 1e-6, heads: heads)
        let attended = backend.attention(q: q, k: k, v: v, heads: heads, scale: nil, keyMask: nil)
        let total = backend.shape(attended)[1]
        let textAttention = backend.slice(attended, axis: 1, 0..<textTokens)
        let imageAttention = backend.slice(attended, axis: 1, textTokens..<total)

        let (imageOut, textOut) = backend.concurrently({ image.projection(imageAttention, backend, gate: imageMod[0].gate, residual: img) },
                                                       { text.projection(textAttention, backend, gate: textMod[0].gate, residual: txt) })
        let mlpNormed = normed(imageOut, imageMod[1], textOut, textMod[1])
        func mlp(_ x: B.Tensor, _ normed: B.Tensor, _ mod: ModulationVectors<B.Tensor>, _ stream: StreamWeights<B>) -> B.Tensor {
            stream.mlpOut(stream.mlpIn(normed, backend, activation: .geluTanh), backend, gate: mod.gate, residual: x)
        }
        return backend.concurrently({ mlp(imageOut, mlpNormed[0], imageMod[1], image) }, { mlp(textOut, mlpNormed[1], textMod[1], text) })
    }
}

/// The rotary tables of one forward pass: the joint sequence (text then image) and its two parts.
public struct FluxRotary<Tensor> {
    public var joint: RotaryTable<Tensor>
    public var text: RotaryTable<Tensor>
    public var image: RotaryTable<Tensor>
}
