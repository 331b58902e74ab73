import KilnBackends
import KilnCore
import KilnModels

/// Text embeddings the transformer is conditioned on: T5 states `[B, T, jointDim]` and pooled CLIP `[B, pooledDim]`.
public struct PromptEmbeddings {
    public var sequence: HostTensor
    public var pooled: HostTensor
    public init(sequence: HostTensor, pooled: HostTensor) {
        self.sequence = sequence
        self.pooled = pooled
    }
}

/// FLUX text-to-image on one backend: FlowMatch Euler over the transformer, then the VAE decoder.
/// Mirrors diffusers' `FluxPipeline` step for step.
public final class TextToImagePipeline<B: Backend> {
    public let backend: B
    public var transformer: FluxTransformer<B>
    public let decoder: VAEDecoder<B>
    public let vaeConfig: AutoencoderConfig
    public let schedulerConfig: SchedulerConfig
    /// Deliberate wiring bugs for mutation tests; empty in normal use.
    public var faults: Faults = [] {
        didSet { transformer.faults = faults }
    }

    /// Builds the pipeline from loaded parts.
    public init(backend: B, transformer: FluxTransformer<B>, decoder: VAEDecoder<B>, vaeConfig: AutoencoderConfig,
                schedulerConfig: SchedulerConfig) {
        self.backend = backend
        self.transformer = transformer
        self.decoder = decoder
        self.vaeConfig = vaeConfig
        self.schedulerConfig = schedulerConfig
    }

    /// Loads transformer and VAE decoder weights from model files.
    public convenience init(files: ModelFiles, backend: B) throws {
        let transformer = try FluxTransformer(config: files.transformerConfig,
                                              loader: WeightLoader(backend: backend, source: files.transformer))
        let decoder = try VAEDecoder(config: files.vaeConfig,
                                     loader: WeightLoader(backend: backend, source: files.vae, prefix: "decoder."))
        let scheduler: SchedulerConfig
        if let json = files.schedulerConfig {
            scheduler = try SchedulerConfig(json: json, path: FileIO.join(files.path, "scheduler/scheduler_config.json"))
        } else {
            scheduler = files.transformerConfig.guidanceEmbed ? .dev : .schnell
        }
        self.init(backend: backend, transformer: transformer, decoder: decoder, vaeConfig: files.vaeConfig, schedulerConfig: scheduler)
    }

    /// The default number of steps for this model's variant.
    public var defaultSteps: Int { transformer.config.guidanceEmbed ? 28 : 4 }

    /// Seeded initial noise `[batch, 16, H/8, W/8]` (see `NoiseGenerator`); batch item i uses seed + i.
    public func initialNoise(_ options: GenerationOptions) -> HostTensor {
        let (h, w) = options.latentSize
        let channels = transformer.config.latentChannels
        var data: [Float] = []
        for item in 0..<options.batch {
            var noise = NoiseGenerator(seed: options.seed &+ UInt64(item))
            data += noise.normal(channels * h * w)
        }
        return HostTensor(shape: [options.batch, channels, h, w], data: data)
    }

    /// Runs the denoising loop from `latents` `[B, 16, h, w]` and returns the final latents in the same layout,
    /// before the VAE's scaling and shift. `progress(step, steps)` is called with 0 once the per-run setup is queued
    /// (conditioning, modulations, text states), then after each step.
    public func denoise(latents: HostTensor, prompt: PromptEmbeddings, options: GenerationOptions,
                        progress: ((Int, Int) -> Void)? = nil) throws -> HostTensor {
        let config = transformer.config
        guard latents.shape.count == 4, latents.shape[1] == config.latentChannels, latents.shape[2] % 2 == 0, latents.shape[3] % 2 == 0 else {
            throw KilnError.invalidArgument("latents must be [B, \(config.latentChannels), H/8, W/8] with even sizes, got \(latents.shape)")
        }
        let (h, w) = (latents.shape[2], latents.shape[3])
        let batch = latents.shape[0]
        guard prompt.sequence.shape.count == 3, prompt.sequence.shape[0] == batch, prompt.sequence.shape[2] == config.jointDim else {
            throw KilnError.invalidArgument("prompt embeddings must be [\(batch), T, \(config.jointDim)], got \(prompt.sequence.shape)")
        }
        guard prompt.pooled.shape == [batch, config.pooledDim] else {
            throw KilnError.invalidArgument("pooled prompt embeddings must be [\(batch), \(config.pooledDim)], got \(prompt.pooled.shape)")
        }
        let rows = h / 2
        let columns = w / 2
        let steps = options.steps ?? defaultSteps
        guard steps >= 1 else { throw KilnError.invalidArgument("steps must be at least 1, got \(steps)") }
        let scheduler = FlowMatchEulerScheduler(config: schedulerConfig, steps: steps, imageTokens: rows * columns,
                                                dynamicShift: !faults.contains(.noDynamicShift))
        // Everything that depends only on the schedule, the guidance and the prompt is computed before the loop:
        // conditioning vectors and all blocks' modulations for every step in one batch, text states, rotary tables.
        let times = scheduler.timesteps.flatMap { [Float](repeating: $0 / 1000, count: batch) }
        let guidance: [Float]? = config.guidanceEmbed ? [Float](repeating: options.guidance, count: steps * batch) : nil
        let pooledPerStep = prompt.pooled.repeated(steps)
        let vec = transformer.conditioning(timestep: times, guidance: guidance, pooled: backend.tensor(pooledPerStep), backend)
        let allModulations = transformer.modulations(vec, backend)
        let modulations = (0..<steps).map { allModulations.rows(($0 * batch)..<(($0 + 1) * batch), backend) }
        let text = transformer.embedText(backend.tensor(prompt.sequence), backend)
        let rope = transformer.positionEmbedding(textTokens: prompt.sequence.shape[1], rows: rows, columns: columns, backend)

        var x = backend.tensor(LatentPacking.pack(latents))
        progress?(0, steps)
        for step in 0..<steps {
            let velocity = transformer.step(latents: x, text: text, modulations: modulations[step], rope: rope, backend)
            x = backend.addScaled(x, velocity, alpha: scheduler.stepSize(step))
            progress?(step + 1, steps)
        }
        return LatentPacking.unpack(backend.host(x), height: h, width: w)
    }

    /// Decodes final latents `[B, 16, h, w]` to images `[B, 3, 8h, 8w]` in [0, 1].
    public func decode(_ latents: HostTensor) -> HostTensor {
        let shift = faults.contains(.vaeShiftDropped) ? 0 : vaeConfig.shiftFactor
        let scaled = latents.permuted([0, 2, 3, 1]).data.map { $0 / vaeConfig.scalingFactor + shift }
        let z = HostTensor(shape: [latents.shape[0], latents.shape[2], latents.shape[3], latents.shape[1]], data: scaled)
        let image = backend.host(decoder(backend.tensor(z), backend)).permuted([0, 3, 1, 2])
        // Non-finite values pass through (the PNG writer blackens them and the caller can count them).
        return HostTensor(shape: image.shape, data: image.data.map { $0.isFinite ? min(max($0 / 2 + 0.5, 0), 1) : $0 })
    }
}
