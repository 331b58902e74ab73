import KilnBackends
import KilnCore
import KilnModels

/// FLUX pipelines with seeded random weights, for running and timing without model files: the tiny model a newcomer
/// sees, and the real FLUX.1 shapes for speed measurements (`--random-weights`).
public struct RandomModel: Sendable {
    public var transformer: FluxConfig
    public var vae: AutoencoderConfig
    public var scheduler: SchedulerConfig
    public var initialization: RandomWeights.Initialization
    /// Text tokens of the stand-in prompt embeddings (the pipeline's max sequence length for the real shapes).
    public var textTokens: Int

    /// The small dev-like model: 2 heads of 64, 2 double and 2 single blocks, joint dim 64, pooled 32, a four-level VAE
    /// with 32–64 channels; weights N(0, 1/fan_in) so its activations stay lively.
    public static var tiny: RandomModel {
        var transformer = FluxConfig()
        transformer.heads = 2
        transformer.headDim = 64
        transformer.axesDim = [8, 28, 28]
        transformer.doubleBlocks = 2
        transformer.singleBlocks = 2
        transformer.jointDim = 64
        transformer.pooledDim = 32
        var vae = AutoencoderConfig()
        vae.blockChannels = [32, 32, 64, 64]
        vae.layersPerBlock = 1
        return RandomModel(transformer: transformer, vae: vae, scheduler: .dev, initialization: .conditioned, textTokens: 16)
    }

    /// FLUX.1-dev or -schnell at full size with N(0, 0.02) weights (norm scales 1, biases 0), as the PyTorch reference
    /// figures were measured.
    public static func full(variant: String) throws -> RandomModel {
        switch variant {
        case "dev": return RandomModel(transformer: .dev, vae: AutoencoderConfig(), scheduler: .dev,
                                       initialization: .flat(std: 0.02), textTokens: 512)
        case "schnell": return RandomModel(transformer: .schnell, vae: AutoencoderConfig(), scheduler: .schnell,
                                           initialization: .flat(std: 0.02), textTokens: 256)
        default: throw KilnError.invalidArgument("unknown variant '\(variant)' (use dev or schnell)")
        }
    }

    /// The pipeline with seeded random weights.
    public func pipeline<B: Backend>(backend: B, seed: UInt64 = 2024) throws -> TextToImagePipeline<B> {
        let weights = RandomWeights(seed: seed, initialization: initialization)
        let model = try FluxTransformer(config: transformer, loader: WeightLoader(backend: backend, source: weights))
        let decoder = try VAEDecoder(config: vae, loader: WeightLoader(backend: backend, source: weights, prefix: "decoder."))
        return TextToImagePipeline(backend: backend, transformer: model, decoder: decoder, vaeConfig: vae, schedulerConfig: scheduler)
    }

    /// Stand-in prompt embeddings seeded by the prompt's bytes, for models without text encoders.
    public func promptEmbeddings(for prompt: String, batch: Int) -> PromptEmbeddings {
        var noise = NoiseGenerator(seed: RandomWeights.hash(prompt))
        let sequence = noise.normal(textTokens * transformer.jointDim)
        let pooled = noise.normal(transformer.pooledDim)
        return PromptEmbeddings(sequence: HostTensor(shape: [1, textTokens, transformer.jointDim], data: sequence).repeated(batch),
                                pooled: HostTensor(shape: [1, transformer.pooledDim], data: pooled).repeated(batch))
    }
}
