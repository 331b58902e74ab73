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
    public var transformer: FluxTransformer<B> {
        // Captured loops read the old weights.
        didSet { forgetLoops() }
    }
    public let decoder: VAEDecoder<B>
    public let vaeConfig: AutoencoderConfig
    public let schedulerConfig: SchedulerConfig
    /// Deliberate wiring bugs for mutation tests; empty in normal use.
    public var faults: Faults = [] {
        didSet { transformer.faults = faults }
    }
    /// Replay repeated denoising loops and decodes as captured graphs where the backend has graphs.
    public var useGraphs: Bool {
        get { loops.enabled }
        set { (loops.enabled, decodes.enabled) = (newValue, newValue) }
    }
    /// How the last `denoise` ran its loop.
    public var lastLoop: GraphRoute { loops.lastRoute }
    /// How the last `decode` or `decodeToPNGRows` ran the VAE decoder.
    public var lastDecode: GraphRoute { decodes.lastRoute }
    /// The device time of the last `decodeToPNGRows`'s decoder, where the backend measures one.
    public private(set) var lastDecodeDeviceMilliseconds: Double?

    /// Denoising loops by shape and decodes by latent shape: eager on a shape's first run, captured on the next,
    /// replayed after that; the graphs of the two most recently used shapes of each are kept (each holds its
    /// intermediates' memory).
    let loops = CapturedGraphs<LoopKey, B>(name: "the denoising loop")
    let decodes = CapturedGraphs<[Int], B>(name: "the VAE decoder")

    /// Drops every captured loop and decoder (their memory returns to the backend's pool).
    public func forgetLoops() {
        loops.forget()
        decodes.forget()
    }

    struct LoopKey: Hashable {
        var batch, rows, columns, textTokens, steps, faults: Int
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
        // The loop's inputs, prepared on the host: packed noise, T5 states, and per step (all steps in one batch) the
        // pooled text and the sinusoidal embeddings of timestep and guidance (kept in fp32 until the backend).
        let times = scheduler.timesteps.flatMap { [Float](repeating: $0 / 1000, count: batch) }
        let inputs = [
            LatentPacking.pack(latents), prompt.sequence, prompt.pooled.repeated(steps), FluxEmbeddings.timestep(times),
            config.guidanceEmbed ? FluxEmbeddings.timestep([Float](repeating: options.guidance, count: steps * batch)) : nil,
        ]
        let key = LoopKey(batch: batch, rows: rows, columns: columns, textTokens: prompt.sequence.shape[1], steps: steps, faults: faults.rawValue)

        let output = loops.run(key, inputs: inputs, on: backend,
                               state: { self.transformer.positionEmbedding(textTokens: prompt.sequence.shape[1], rows: rows, columns: columns, self.backend) },
                               beforeGraph: { progress?(0, steps) }) { tensors, rope, capturing in
            self.denoisingLoop(latents: tensors[0]!, text: tensors[1]!, pooled: tensors[2]!, timeEmbedding: tensors[3]!,
                               guidanceEmbedding: tensors[4], rope: rope.map { $0 as! FluxRotary<B.Tensor> }, scheduler: scheduler, batch: batch,
                               progress: capturing ? nil : progress)
        }
        if lastLoop != .eager { progress?(steps, steps) }
        return LatentPacking.unpack(backend.host(output), height: h, width: w)
    }

    /// The denoising loop as device work only (no host transfers), so it can be captured as one graph: conditioning and
    /// every block's modulation for all steps in one batch, text states, then the steps.
    func denoisingLoop(latents: B.Tensor, text: B.Tensor, pooled: B.Tensor, timeEmbedding: B.Tensor, guidanceEmbedding: B.Tensor?,
                       rope: FluxRotary<B.Tensor>?, scheduler: FlowMatchEulerScheduler, batch: Int,
                       progress: ((Int, Int) -> Void)?) -> B.Tensor {
        let vec = transformer.conditioning(timeEmbedding: timeEmbedding, guidanceEmbedding: guidanceEmbedding, pooled: pooled, backend)
        let allModulations = transformer.modulations(vec, backend)
        let modulations = (0..<scheduler.steps).map { allModulations.rows(($0 * batch)..<(($0 + 1) * batch), backend) }
        let textStates = transformer.embedText(text, backend)
        var x = latents
        progress?(0, scheduler.steps)
        for step in 0..<scheduler.steps {
            let velocity = transformer.step(latents: x, text: textStates, modulations: modulations[step], rope: rope, backend)
            x = backend.addScaled(x, velocity, alpha: scheduler.stepSize(step))
            progress?(step + 1, scheduler.steps)
        }
        return x
    }

    /// Decodes final latents `[B, 16, h, w]` to images `[B, 3, 8h, 8w]` in [0, 1].
    public func decode(_ latents: HostTensor) -> HostTensor {
        TextToImagePipeline.imagePlanes(backend.host(decodeOnDevice(decoderInput(latents))))
    }

    /// Decodes final latents `[B, 16, h, w]` straight to PNG image data (`Backend.imageRows`: 8-bit samples made where
    /// the image is, 3 bytes a pixel moved to the host), one slice per image: what `PNG.encode(filteredRows:)` takes.
    /// `lastDecodeDeviceMilliseconds` gets the decoder's device time (latents in, image on the device out).
    public func decodeToPNGRows(_ latents: HostTensor) -> (images: [ArraySlice<UInt8>], width: Int, height: Int, nonFinite: Int) {
        let (batch, height, width) = (latents.shape[0], 8 * latents.shape[2], 8 * latents.shape[3])
        let input = decoderInput(latents)
        let (image, milliseconds) = backend.deviceTimed { decodeOnDevice(input) }
        let (rows, nonFinite) = backend.imageRows(image)
        lastDecodeDeviceMilliseconds = milliseconds()
        let size = height * (1 + 3 * width)
        return ((0..<batch).map { rows[($0 * size)..<(($0 + 1) * size)] }, width, height, nonFinite)
    }

    /// Latents unscaled and shifted for the VAE, NHWC.
    func decoderInput(_ latents: HostTensor) -> HostTensor {
        let shift = faults.contains(.vaeShiftDropped) ? 0 : vaeConfig.shiftFactor
        let scaled = latents.permuted([0, 2, 3, 1]).data.map { $0 / vaeConfig.scalingFactor + shift }
        return HostTensor(shape: [latents.shape[0], latents.shape[2], latents.shape[3], latents.shape[1]], data: scaled)
    }

    /// The decoder's NHWC output in [-1, 1] as NCHW planes in [0, 1], in one pass (three separate passes over a
    /// 1024x1024 image took 30 ms on the host). Non-finite values pass through (the PNG writer blackens them and the
    /// caller can count them).
    static func imagePlanes(_ nhwc: HostTensor) -> HostTensor {
        let (batch, height, width, channels) = (nhwc.shape[0], nhwc.shape[1], nhwc.shape[2], nhwc.shape[3])
        let plane = height * width
        var planes = [Float](repeating: 0, count: nhwc.data.count)
        nhwc.data.withUnsafeBufferPointer { source in
            planes.withUnsafeMutableBufferPointer { target in
                for b in 0..<batch {
                    for pixel in 0..<plane {
                        let from = (b * plane + pixel) * channels
                        for c in 0..<channels {
                            let v = source[from + c]
                            target[(b * channels + c) * plane + pixel] = v.isFinite ? min(max(v / 2 + 0.5, 0), 1) : v
                        }
                    }
                }
            }
        }
        return HostTensor(shape: [batch, channels, height, width], data: planes)
    }

    /// The VAE decoder on the device, by `decodes`' route for the latent shape.
    func decodeOnDevice(_ z: HostTensor) -> B.Tensor {
        decodes.run(z.shape, inputs: [z], on: backend) { inputs, _, _ in self.decoder(inputs[0]!, self.backend) }
    }
}
