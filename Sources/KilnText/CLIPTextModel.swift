import KilnBackends
import KilnCore
import KilnModels

/// Hyperparameters of a CLIP text model, from a transformers `config.json`.
public struct CLIPTextConfig: Equatable, Sendable {
    public var vocabSize = 49408
    public var hidden = 768
    public var intermediate = 3072
    public var layers = 12
    public var heads = 12
    public var maxPositions = 77
    public var layerNormEps: Float = 1e-5
    /// `quick_gelu` (CLIP-L) or `gelu` (exact erf GELU, some other CLIP models; not supported by the op interface).
    public var hiddenAct = "quick_gelu"
    /// 2 in FLUX's config (CLIP's legacy value): the pooled output is then taken at `argmax(input_ids)`.
    public var eosTokenId = 2

    public init() {}

    /// Reads `config.json` (a `CLIPTextConfig`, or a `CLIPConfig` holding one as `text_config`).
    public init(path: String) throws {
        var json = try FileIO.readJSON(path)
        if let text = json["text_config"], text != .null { json = text }
        vocabSize = try json.positiveInt("vocab_size", default: vocabSize, in: path)
        hidden = try json.positiveInt("hidden_size", default: hidden, in: path)
        intermediate = try json.positiveInt("intermediate_size", default: intermediate, in: path)
        layers = try json.positiveInt("num_hidden_layers", default: layers, in: path)
        heads = try json.positiveInt("num_attention_heads", default: heads, in: path)
        maxPositions = try json.positiveInt("max_position_embeddings", default: maxPositions, in: path)
        eosTokenId = try json.positiveInt("eos_token_id", default: eosTokenId, in: path)
        layerNormEps = Float(try json.finiteNumber("layer_norm_eps", default: Double(layerNormEps), in: path))
        if let act = json["hidden_act"]?.string { hiddenAct = act }
        guard hiddenAct == "quick_gelu" else {
            throw KilnError.unsupported("\(path): hidden_act \(hiddenAct) is not supported (quick_gelu is)")
        }
        guard hidden % heads == 0 else { throw KilnError.corruptFile(path: path, reason: "hidden_size not divisible by heads") }
    }
}

/// A checkpoint seen through names below an optional prefix.
public struct CheckpointWeights: WeightSource {
    public let checkpoint: Checkpoint
    public let prefix: String
    public init(_ checkpoint: Checkpoint, prefix: String = "") {
        self.checkpoint = checkpoint
        self.prefix = prefix
    }
    public var origin: String { checkpoint.path }
    public func tensor(_ name: String, shape: [Int]) throws -> HostTensor {
        try checked(try checkpoint.tensor(prefix + name), prefix + name, shape)
    }

    /// Hands the stored tensor to the backend as it is (a device backend uploads the file's bytes; no host decoding).
    public func load<B: Backend>(_ name: String, shape: [Int], role: WeightRole, backend: B) throws -> B.Tensor {
        let stored = try checkpoint.stored(prefix + name)
        guard stored.shape == shape else { throw KilnError.wrongShape(name: prefix + name, expected: shape, found: stored.shape) }
        return backend.weight(rows: [stored], role: role)
    }

    /// The stored tensors handed over together, so a device backend joins the file's bytes on the device.
    public func load<B: Backend>(joining names: [String], shapes: [[Int]], role: WeightRole, backend: B) throws -> B.Tensor {
        let parts = try zip(names, shapes).map { name, shape in
            let stored = try checkpoint.stored(prefix + name)
            guard stored.shape == shape else { throw KilnError.wrongShape(name: prefix + name, expected: shape, found: stored.shape) }
            return stored
        }
        return backend.weight(rows: parts, role: role)
    }
}

struct CLIPEncoderLayer<B: Backend> {
    let norm1: NormWeights<B>
    let q, k, v, out: Linear<B>
    let norm2: NormWeights<B>
    let fc1, fc2: Linear<B>

    init(_ loader: WeightLoader<B>, config: CLIPTextConfig) throws {
        let h = config.hidden
        norm1 = try loader.norm("layer_norm1", channels: h)
        q = try loader.linear("self_attn.q_proj", in: h, out: h)
        k = try loader.linear("self_attn.k_proj", in: h, out: h)
        v = try loader.linear("self_attn.v_proj", in: h, out: h)
        out = try loader.linear("self_attn.out_proj", in: h, out: h)
        norm2 = try loader.norm("layer_norm2", channels: h)
        fc1 = try loader.linear("mlp.fc1", in: h, out: config.intermediate)
        fc2 = try loader.linear("mlp.fc2", in: config.intermediate, out: h)
    }
}

/// CLIP's text transformer (transformers' `CLIPTextModel`): token + position embeddings, pre-norm layers with
/// causal self-attention and a quick-GELU MLP, a final layer norm, and the pooled output at the end-of-text token.
public struct CLIPTextModel<B: Backend> {
    public let config: CLIPTextConfig
    let tokenEmbedding: HostTensor
    let positionEmbedding: HostTensor
    let layers: [CLIPEncoderLayer<B>]
    let finalNorm: NormWeights<B>
    let graphs = EncoderGraphs<B>(name: "CLIP")
    /// Deliberate wiring bugs for mutation tests; empty in normal use.
    public var faults: TextFaults = []

    /// Loads `config.json` and the safetensors (one file or an indexed set of shards) of a `text_encoder/` folder.
    public init(folder: String, backend: B) throws {
        let config = try CLIPTextConfig(path: try TokenizerFiles.require(folder, "config.json"))
        let checkpoint = try Checkpoint(path: folder)
        let prefix = checkpoint.contains("text_model.embeddings.token_embedding.weight") ? "text_model." : ""
        try self.init(config: config, loader: WeightLoader(backend: backend, source: CheckpointWeights(checkpoint, prefix: prefix)))
    }

    /// Loads the weights through `loader` under transformers' names below `text_model.`.
    public init(config: CLIPTextConfig, loader: WeightLoader<B>) throws {
        self.config = config
        let h = config.hidden
        tokenEmbedding = try loader.host("embeddings.token_embedding.weight", shape: [config.vocabSize, h])
        positionEmbedding = try loader.host("embeddings.position_embedding.weight", shape: [config.maxPositions, h])
        layers = try (0..<config.layers).map { try CLIPEncoderLayer(loader.scoped("encoder.layers.\($0)"), config: config) }
        finalNorm = try loader.norm("final_layer_norm", channels: h)
    }

    /// The position of the pooled token: the first `argmax(ids)` with the legacy `eos_token_id` 2, else the first
    /// position holding `eos_token_id`, as transformers does.
    public func pooledPosition(_ ids: [Int]) -> Int {
        if config.eosTokenId == 2 {
            var best = 0
            for (i, id) in ids.enumerated() where id > ids[best] { best = i }
            return best
        }
        return ids.firstIndex(of: config.eosTokenId) ?? 0
    }

    /// Runs the model on one sequence of ids (at most `maxPositions`): the last hidden state `[1, L, hidden]`
    /// and the pooled output `[1, hidden]`.
    public func callAsFunction(ids: [Int], _ backend: B) throws -> (lastHidden: B.Tensor, pooled: B.Tensor) {
        let length = ids.count
        guard length > 0, length <= config.maxPositions else {
            throw KilnError.invalidArgument("CLIP takes 1 to \(config.maxPositions) tokens, got \(length)")
        }
        if let bad = ids.first(where: { $0 < 0 || $0 >= config.vocabSize }) {
            throw KilnError.invalidArgument("token id \(bad) is outside CLIP's vocabulary of \(config.vocabSize)")
        }
        let h = config.hidden
        var embedded = Embedding.gather(tokenEmbedding, ids)
        for i in 0..<(length * h) { embedded.data[i] += positionEmbedding.data[i] }
        let key = [length, faults.rawValue]
        let bias = graphs.constant(key, backend) {
            var causal = HostTensor(shape: [1, length, length])
            if !faults.contains(.noCausalMask) {
                for i in 0..<length { for j in 0..<length where j > i { causal.data[i * length + j] = -.infinity } }
            }
            return causal
        }
        let last = graphs.run(key, input: embedded, backend) { self.stack($0, bias: bias, backend) }
        let position = faults.contains(.pooledAtLastToken) ? length - 1 : pooledPosition(ids)
        let pooled = backend.reshape(backend.slice(last, axis: 1, position..<(position + 1)), [1, h])
        return (last, pooled)
    }

    /// The layers and the final norm over embedded tokens `[1, L, hidden]` (device work only, so it can be captured).
    func stack(_ input: B.Tensor, bias: B.Tensor, _ backend: B) -> B.Tensor {
        let headDim = config.hidden / config.heads
        let scale = 1 / Float(headDim).squareRoot()
        var x = input
        for layer in layers {
            let normed = backend.layerNorm(x, weight: layer.norm1.weight, bias: layer.norm1.bias, eps: config.layerNormEps)
            let attended = backend.attention(q: layer.q(normed, backend), k: layer.k(normed, backend),
                                             v: layer.v(normed, backend), heads: config.heads, scale: scale, bias: bias)
            x = backend.add(x, layer.out(attended, backend))
            let normed2 = backend.layerNorm(x, weight: layer.norm2.weight, bias: layer.norm2.bias, eps: config.layerNormEps)
            x = backend.add(x, layer.fc2(backend.quickGELU(layer.fc1(normed2, backend)), backend))
        }
        return faults.contains(.noFinalNorm) ? x : backend.layerNorm(x, weight: finalNorm.weight, bias: finalNorm.bias, eps: config.layerNormEps)
    }
}
