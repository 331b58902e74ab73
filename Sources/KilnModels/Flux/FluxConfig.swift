import KilnCore

/// The shape of a FLUX transformer. The real FLUX.1 models: hidden 3072 = 24 heads × 128, 19 double- and 38
/// single-stream blocks, MLP ratio 4, T5 joint dim 4096, CLIP pooled 768, RoPE axes (16, 56, 56).
public struct FluxConfig: Equatable, Sendable {
    public var inChannels = 64
    public var heads = 24
    public var headDim = 128
    public var doubleBlocks = 19
    public var singleBlocks = 38
    public var jointDim = 4096
    public var pooledDim = 768
    public var mlpRatio = 4
    /// FLUX.1-dev embeds the guidance scale; FLUX.1-schnell does not.
    public var guidanceEmbed = true
    public var axesDim = [16, 56, 56]
    public var theta = 10_000.0

    public init() {}

    public var hidden: Int { heads * headDim }
    public var mlpHidden: Int { hidden * mlpRatio }
    /// "dev" or "schnell".
    public var variant: String { guidanceEmbed ? "dev" : "schnell" }

    /// FLUX.1-dev at full size.
    public static let dev = FluxConfig()
    /// FLUX.1-schnell at full size.
    public static var schnell: FluxConfig {
        var config = FluxConfig()
        config.guidanceEmbed = false
        return config
    }

    /// Reads a diffusers `transformer/config.json`.
    public init(diffusersConfig json: JSON, path: String) throws {
        func int(_ key: String, _ fallback: Int) throws -> Int { try json.positiveInt(key, default: fallback, in: path) }
        inChannels = try int("in_channels", 64)
        heads = try int("num_attention_heads", 24)
        headDim = try int("attention_head_dim", 128)
        doubleBlocks = try int("num_layers", 19)
        singleBlocks = try int("num_single_layers", 38)
        jointDim = try int("joint_attention_dim", 4096)
        pooledDim = try int("pooled_projection_dim", 768)
        guidanceEmbed = json["guidance_embeds"]?.bool ?? false
        if let axes = json["axes_dims_rope"]?.array {
            axesDim = try axes.map {
                guard let n = $0.int, n > 0, n % 2 == 0 else {
                    throw KilnError.corruptFile(path: path, reason: "axes_dims_rope must hold positive even integers")
                }
                return n
            }
        }
        if let patch = json["patch_size"]?.int, patch != 1 {
            throw KilnError.unsupported("\(path): patch_size \(patch) is not supported (FLUX uses 1)")
        }
        try validate(path: path)
    }

    /// Derives the config from the tensor shapes of a BFL-layout checkpoint (which carries no config).
    /// RoPE axes are FLUX's (16, 56, 56) for head size 128 and scaled in proportion for other head sizes.
    public init(bflShapes shape: (String) -> [Int]?, path: String) throws {
        /// The shape of `name`, which must have `rank` dimensions.
        func need(_ name: String, rank: Int) throws -> [Int] {
            guard let s = shape(name) else { throw KilnError.missingTensor(name: name, file: path) }
            guard s.count == rank, s.allSatisfy({ $0 > 0 }) else {
                throw KilnError.corruptFile(path: path, reason: "tensor '\(name)' has shape \(s), expected \(rank) positive dimensions")
            }
            return s
        }
        let imgIn = try need("img_in.weight", rank: 2)
        inChannels = imgIn[1]
        let hidden = imgIn[0]
        headDim = try need("double_blocks.0.img_attn.norm.query_norm.scale", rank: 1)[0]
        guard headDim > 0, hidden % headDim == 0 else {
            throw KilnError.corruptFile(path: path, reason: "hidden size \(hidden) is not a multiple of head size \(headDim)")
        }
        heads = hidden / headDim
        jointDim = try need("txt_in.weight", rank: 2)[1]
        pooledDim = try need("vector_in.in_layer.weight", rank: 2)[1]
        mlpRatio = try need("double_blocks.0.img_mlp.0.weight", rank: 2)[0] / hidden
        guard mlpRatio >= 1 else { throw KilnError.corruptFile(path: path, reason: "MLP is narrower than the hidden size") }
        guidanceEmbed = shape("guidance_in.in_layer.weight") != nil
        func count(_ prefix: String) -> Int {
            var n = 0
            while shape("\(prefix).\(n).linear1.weight") != nil || shape("\(prefix).\(n).img_attn.qkv.weight") != nil { n += 1 }
            return n
        }
        doubleBlocks = count("double_blocks")
        singleBlocks = count("single_blocks")
        guard headDim % 8 == 0 else {
            throw KilnError.unsupported("\(path): head size \(headDim) has no RoPE axes convention (needs a multiple of 8)")
        }
        axesDim = [16, 56, 56].map { $0 * headDim / 128 }
        try validate(path: path)
    }

    func validate(path: String) throws {
        guard axesDim.count == 3 else {
            throw KilnError.corruptFile(path: path, reason: "RoPE needs 3 axes (index, row, column), got \(axesDim)")
        }
        guard axesDim.reduce(0, +) == headDim else {
            throw KilnError.corruptFile(path: path, reason: "RoPE axes \(axesDim) do not sum to the head size \(headDim)")
        }
        guard inChannels % 4 == 0 else {
            throw KilnError.corruptFile(path: path, reason: "in_channels \(inChannels) is not 4 × latent channels")
        }
    }

    /// Latent channels before 2×2 packing (16 for FLUX).
    public var latentChannels: Int { inChannels / 4 }

    /// Floating-point operations (2 per multiply-add) of one transformer step for one image of `imageTokens` packed
    /// latent tokens and `textTokens` text tokens: the token-wise linear layers of all blocks, attention (QKᵀ and PV),
    /// and the per-step modulation vectors. Embedders and the final layer are left out (under 0.1%).
    public func stepFLOPs(imageTokens: Int, textTokens: Int) -> Double {
        let h = Double(hidden)
        let tokens = Double(imageTokens + textTokens)
        let mlp = Double(mlpHidden)
        let doubleLinear = 4 * h * h + 2 * h * mlp
        let singleLinear = h * (3 * h + mlp) + (h + mlp) * h
        let linear = 2 * tokens * (Double(doubleBlocks) * doubleLinear + Double(singleBlocks) * singleLinear)
        let attention = Double(doubleBlocks + singleBlocks) * 4 * tokens * tokens * h
        let modulation = 2 * (Double(doubleBlocks) * 12 * h * h + Double(singleBlocks) * 3 * h * h + 2 * h * h)
        return linear + attention + modulation
    }

    /// Parameter count of the transformer with this shape.
    public var parameterCount: Int {
        let h = hidden
        let embed = inChannels * h + h + jointDim * h + h + (256 * h + h + h * h + h) * (guidanceEmbed ? 2 : 1) + pooledDim * h + h + h * h + h
        let perStream = h * 6 * h + 6 * h + h * 3 * h + 3 * h + 2 * headDim + h * h + h + h * mlpHidden + mlpHidden + mlpHidden * h + h
        let single = h * 3 * h + 3 * h + h * (3 * h + mlpHidden) + 3 * h + mlpHidden + 2 * headDim + (h + mlpHidden) * h + h
        let final = h * 2 * h + 2 * h + h * inChannels + inChannels
        return embed + doubleBlocks * 2 * perStream + singleBlocks * single + final
    }
}
