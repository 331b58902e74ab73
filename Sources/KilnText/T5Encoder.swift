#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KilnBackends
import KilnCore
import KilnModels

/// Hyperparameters of a T5 encoder, from a transformers `config.json`.
public struct T5Config: Equatable, Sendable {
    public var vocabSize = 32128
    public var dModel = 4096
    public var dKV = 64
    public var dFF = 10240
    public var layers = 24
    public var heads = 64
    public var buckets = 32
    public var maxDistance = 128
    public var layerNormEps: Float = 1e-6

    public init() {}

    /// Reads `config.json`; only the gated-GELU (`gelu_new`) feed-forward of T5 v1.1 is supported.
    public init(path: String) throws {
        let json = try FileIO.readJSON(path)
        vocabSize = try json.positiveInt("vocab_size", default: vocabSize, in: path)
        dModel = try json.positiveInt("d_model", default: dModel, in: path)
        dKV = try json.positiveInt("d_kv", default: dKV, in: path)
        dFF = try json.positiveInt("d_ff", default: dFF, in: path)
        layers = try json.positiveInt("num_layers", default: layers, in: path)
        heads = try json.positiveInt("num_heads", default: heads, in: path)
        buckets = try json.positiveInt("relative_attention_num_buckets", default: buckets, in: path)
        maxDistance = try json.positiveInt("relative_attention_max_distance", default: maxDistance, in: path)
        layerNormEps = Float(try json.finiteNumber("layer_norm_epsilon", default: Double(layerNormEps), in: path))
        let projection = json["feed_forward_proj"]?.string ?? "gated-gelu"
        let activation = json["dense_act_fn"]?.string ?? "gelu_new"
        guard projection == "gated-gelu" || (projection.hasPrefix("gated-") && activation == "gelu_new") else {
            throw KilnError.unsupported("\(path): feed_forward_proj \(projection) is not supported (gated-gelu is)")
        }
    }

    /// T5's bidirectional relative-position bucket of `relative = key − query`, computed in float32 as
    /// transformers does (`T5Attention._relative_position_bucket`).
    public func bucket(_ relative: Int) -> Int {
        let half = buckets / 2
        var result = relative > 0 ? half : 0
        let n = abs(relative)
        let maxExact = half / 2
        if n < maxExact { return result + n }
        let scaled = Float(logf(Float(n) / Float(maxExact))) / Float(log(Double(maxDistance) / Double(maxExact)))
            * Float(half - maxExact)
        result += min(maxExact + Int(scaled), half - 1)
        return result
    }
}

struct T5Block<B: Backend> {
    let attentionNorm: B.Tensor
    /// Q, K and V as one GEMM (at 512 tokens, three separate ones fill half of an H100's SMs each).
    let qkv: Linear<B>
    let o: Linear<B>
    let ffNorm: B.Tensor
    /// `wi_0` and `wi_1` as one GEMM, its output `[wi_0 · x | wi_1 · x]` for `gatedGELU`.
    let wi: Linear<B>
    let wo: Linear<B>

    init(_ loader: WeightLoader<B>, config: T5Config) throws {
        let inner = config.heads * config.dKV
        let attention = loader.scoped("layer.0")
        attentionNorm = try attention.vector("layer_norm.weight", count: config.dModel)
        qkv = try attention.linear(joining: ["SelfAttention.q", "SelfAttention.k", "SelfAttention.v"], in: config.dModel, out: inner)
        o = try attention.linear("SelfAttention.o", in: inner, out: config.dModel, bias: false)
        let ff = loader.scoped("layer.1")
        ffNorm = try ff.vector("layer_norm.weight", count: config.dModel)
        wi = try ff.linear(joining: ["DenseReluDense.wi_0", "DenseReluDense.wi_1"], in: config.dModel, out: config.dFF)
        wo = try ff.linear("DenseReluDense.wo", in: config.dFF, out: config.dModel, bias: false)
    }
}

/// T5's encoder stack (transformers' `T5EncoderModel`, v1.1 flavour as in FLUX): embeddings, pre-RMS-norm blocks with
/// unscaled self-attention plus a relative-position bias (computed by block 0's table, shared by all blocks), a
/// gated-GELU feed-forward, and a final RMS norm. Like FluxPipeline, it attends to every position (no padding mask).
public struct T5Encoder<B: Backend> {
    public let config: T5Config
    let embedding: HostTensor
    /// `[buckets, heads]`.
    let relativeBias: HostTensor
    let blocks: [T5Block<B>]
    let finalNorm: B.Tensor
    let graphs = EncoderGraphs<B>(name: "T5")
    /// Deliberate wiring bugs for mutation tests; empty in normal use.
    public var faults: TextFaults = []

    /// Loads `config.json` and the safetensors (one file or an indexed set of shards) of a `text_encoder_2/` folder;
    /// `quantizable`: its linear layers go to the backend as `.quantizableLinear` (FP8 where the backend's linears are).
    public init(folder: String, backend: B, quantizable: Bool = false) throws {
        let config = try T5Config(path: try TokenizerFiles.require(folder, "config.json"))
        let checkpoint = try Checkpoint(path: folder)
        let loader = WeightLoader(backend: backend, source: CheckpointWeights(checkpoint))
        try self.init(config: config, loader: quantizable ? loader.quantizingLinears() : loader,
                      embeddingName: checkpoint.contains("encoder.embed_tokens.weight") ? "encoder.embed_tokens.weight" : "shared.weight")
    }

    /// Loads the weights through `loader` under transformers' names (`shared.weight`, `encoder.block.N…`).
    public init(config: T5Config, loader: WeightLoader<B>, embeddingName: String = "shared.weight") throws {
        self.config = config
        embedding = try loader.host(embeddingName, shape: [config.vocabSize, config.dModel])
        let encoder = loader.scoped("encoder")
        relativeBias = try encoder.host("block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                                        shape: [config.buckets, config.heads])
        blocks = try (0..<config.layers).map { try T5Block(encoder.scoped("block.\($0)"), config: config) }
        finalNorm = try encoder.vector("final_layer_norm.weight", count: config.dModel)
    }

    /// The position bias `[heads, L, L]`: `bias[h, i, j] = table[bucket(j − i), h]`.
    public func positionBias(length: Int) -> HostTensor {
        let h = config.heads
        var bias = HostTensor(shape: [h, length, length])
        let buckets = (-(length - 1)...(length - 1)).map { config.bucket(faults.contains(.bucketsMirrored) ? -$0 : $0) }
        for head in 0..<h {
            for i in 0..<length {
                for j in 0..<length {
                    bias.data[(head * length + i) * length + j] = faults.contains(.noPositionBias)
                        ? 0 : relativeBias.data[buckets[j - i + length - 1] * h + head]
                }
            }
        }
        return bias
    }

    /// The last hidden state `[1, L, d_model]` for one sequence of ids.
    public func callAsFunction(ids: [Int], _ backend: B) throws -> B.Tensor {
        guard !ids.isEmpty else { throw KilnError.invalidArgument("T5 needs at least one token") }
        if let bad = ids.first(where: { $0 < 0 || $0 >= config.vocabSize }) {
            throw KilnError.invalidArgument("token id \(bad) is outside T5's vocabulary of \(config.vocabSize)")
        }
        let key = [ids.count, faults.rawValue]
        let bias = graphs.constant(key, backend) { positionBias(length: ids.count) }
        return graphs.run(key, input: Embedding.gather(embedding, ids), backend) { self.stack($0, bias: bias, backend) }
    }

    /// The blocks and the final norm over embedded tokens `[1, L, d_model]` (device work only, so it can be captured).
    func stack(_ input: B.Tensor, bias: B.Tensor, _ backend: B) -> B.Tensor {
        var x = input
        let eps = config.layerNormEps
        let inner = config.heads * config.dKV
        for block in blocks {
            let normed = backend.rmsNorm(x, weight: block.attentionNorm, eps: eps)
            let qkv = block.qkv(normed, backend)
            let (q, k, v) = (backend.slice(qkv, axis: 2, 0..<inner), backend.slice(qkv, axis: 2, inner..<(2 * inner)),
                             backend.slice(qkv, axis: 2, (2 * inner)..<(3 * inner)))
            let attended = backend.attention(q: q, k: k, v: v, heads: config.heads, scale: 1, bias: bias)
            x = backend.add(x, block.o(attended, backend))
            let hidden = block.wi(backend.rmsNorm(x, weight: block.ffNorm, eps: eps), backend)
            let gated = faults.contains(.gateSwapped)
                ? backend.multiply(backend.activation(backend.slice(hidden, axis: 2, config.dFF..<(2 * config.dFF)), .geluTanh),
                                   backend.slice(hidden, axis: 2, 0..<config.dFF))
                : backend.gatedGELU(hidden)
            x = backend.add(x, block.wo(gated, backend))
        }
        return faults.contains(.noFinalNorm) ? x : backend.rmsNorm(x, weight: finalNorm, eps: eps)
    }
}
