import KilnBackends
import KilnCore
import KilnModels

/// The small random-weight FLUX that `kiln generate` runs when no model is given, so a newcomer sees the
/// whole pipeline work in seconds. Its images are noise-like: the weights are random, not trained.
public enum TinyModel {
    /// A dev-like transformer: 2 heads of 64, 2 double and 2 single blocks, joint dim 64, pooled 32.
    public static var transformerConfig: FluxConfig {
        var config = FluxConfig()
        config.heads = 2
        config.headDim = 64
        config.axesDim = [8, 28, 28]
        config.doubleBlocks = 2
        config.singleBlocks = 2
        config.jointDim = 64
        config.pooledDim = 32
        return config
    }

    /// A four-level VAE with 32–64 channels.
    public static var vaeConfig: AutoencoderConfig {
        var config = AutoencoderConfig()
        config.blockChannels = [32, 32, 64, 64]
        config.layersPerBlock = 1
        return config
    }

    /// Text tokens of the tiny model's stand-in prompt embeddings.
    public static let textTokens = 16

    /// The pipeline with seeded random weights.
    public static func pipeline<B: Backend>(backend: B, seed: UInt64 = 2024) throws -> TextToImagePipeline<B> {
        let weights = RandomWeights(seed: seed)
        let transformer = try FluxTransformer(config: transformerConfig, loader: WeightLoader(backend: backend, source: weights))
        let decoder = try VAEDecoder(config: vaeConfig, loader: WeightLoader(backend: backend, source: weights, prefix: "decoder."))
        return TextToImagePipeline(backend: backend, transformer: transformer, decoder: decoder, vaeConfig: vaeConfig,
                                   schedulerConfig: .dev)
    }

    /// Stand-in prompt embeddings: seeded by the prompt's bytes, since the tiny model has no text encoders.
    public static func promptEmbeddings(for prompt: String, batch: Int) -> PromptEmbeddings {
        var noise = NoiseGenerator(seed: RandomWeights.hash(prompt))
        let config = transformerConfig
        let sequence = noise.normal(textTokens * config.jointDim)
        let pooled = noise.normal(config.pooledDim)
        return PromptEmbeddings(
            sequence: HostTensor(shape: [batch, textTokens, config.jointDim], data: Array((0..<batch).map { _ in sequence }.joined())),
            pooled: HostTensor(shape: [batch, config.pooledDim], data: Array((0..<batch).map { _ in pooled }.joined())))
    }
}
