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
    /// Replay repeated denoising loops as one captured graph where the backend has graphs.
    public var useGraphs = true
    /// How the last `denoise` ran its loop.
    public private(set) var lastLoop = LoopMode.eager
    /// How the last `decode` or `decodeToPNGRows` ran the VAE decoder (graphs as for loops: eager, then captured, then
    /// replayed).
    public private(set) var lastDecode = LoopMode.eager
    /// The device time of the last `decodeToPNGRows`'s decoder, where the backend measures one.
    public private(set) var lastDecodeDeviceMilliseconds: Double?

    /// Eager (op by op), captured into a graph and replayed, or replayed from an earlier capture.
    public enum LoopMode: String, Sendable {
        case eager
        case captured
        case replayed
    }

    /// Loop shapes run eagerly, with the backend's memory generation at that run: the next run of the shape captures its
    /// graph if the generation is unchanged. (Nothing of the eager run is kept: the capture must find every block the
    /// eager run used back in the pool.)
    var seenLoops: [LoopKey: Int] = [:]
    /// Captured loops by shape, oldest first in `loopOrder`; at most `maximumCapturedLoops` are kept (each holds its
    /// intermediates' memory).
    var loops: [LoopKey: CapturedLoop] = [:]
    var loopOrder: [LoopKey] = []
    public var maximumCapturedLoops = 2

    func keep(_ loop: CapturedLoop, for key: LoopKey) {
        loops[key] = loop
        loopOrder.append(key)
        while loopOrder.count > maximumCapturedLoops { loops[loopOrder.removeFirst()] = nil }
    }

    /// Decoder runs by latent shape, as `seenLoops`, `loops` and `loopOrder` are for the denoising loop.
    var seenDecodes: [[Int]: Int] = [:]
    var decodes: [[Int]: CapturedDecode] = [:]
    var decodeOrder: [[Int]] = []

    struct CapturedDecode {
        var input: B.Tensor
        var output: B.Tensor
        var graph: DeviceGraph
    }

    /// Drops every captured loop and decoder (their memory returns to the backend's pool).
    public func forgetLoops() {
        loops = [:]
        loopOrder = []
        seenLoops = [:]
        decodes = [:]
        decodeOrder = []
        seenDecodes = [:]
    }

    struct LoopKey: Hashable {
        var batch, rows, columns, textTokens, steps, faults: Int
    }

    /// A captured loop's input tensors (in `denoise`'s input order; nil where the model takes no such input), rotary
    /// tables, output and graph.
    struct CapturedLoop {
        var inputs: [B.Tensor?]
        var rope: FluxRotary<B.Tensor>?
        var output: B.Tensor
        var graph: DeviceGraph
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

        // A loop seen before with these shapes replays as one graph: new values go into its input buffers.
        if useGraphs, let loop = loops[key] {
            precondition(loop.inputs.count == inputs.count)
            for (tensor, host) in zip(loop.inputs, inputs) {
                if let tensor, let host { try backend.overwrite(tensor, with: host) }
            }
            progress?(0, steps)
            try loop.graph.replay()
            lastLoop = .replayed
            progress?(steps, steps)
            return LatentPacking.unpack(backend.host(loop.output), height: h, width: w)
        }
        let tensors = inputs.map { $0.map(backend.tensor) }
        let rope = transformer.positionEmbedding(textTokens: prompt.sequence.shape[1], rows: rows, columns: columns, backend)
        func run(progress: ((Int, Int) -> Void)?) -> B.Tensor {
            denoisingLoop(latents: tensors[0]!, text: tensors[1]!, pooled: tensors[2]!, timeEmbedding: tensors[3]!,
                          guidanceEmbedding: tensors[4], rope: rope, scheduler: scheduler, batch: batch, progress: progress)
        }
        // The first run of a shape is eager (it tunes kernels and sizes the memory pool); the next one is captured, if
        // the pool still holds every block that eager run used.
        if useGraphs, seenLoops[key] == backend.memoryGeneration {
            var output: B.Tensor?
            if let graph = try backend.capture({ output = run(progress: nil) }) {
                keep(CapturedLoop(inputs: tensors, rope: rope, output: output!, graph: graph), for: key)
                progress?(0, steps)
                try graph.replay()
                lastLoop = .captured
                progress?(steps, steps)
                return LatentPacking.unpack(backend.host(output!), height: h, width: w)
            }
        }
        let output = run(progress: progress)
        lastLoop = .eager
        seenLoops[key] = backend.memoryGeneration
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

    /// The VAE decoder on the device: op by op on a latent shape's first decode, captured as one graph on the next if
    /// the memory pool still holds what the first used (as for loops), replayed with the new latents after that.
    func decodeOnDevice(_ z: HostTensor) -> B.Tensor {
        if useGraphs, let captured = decodes[z.shape], (try? backend.overwrite(captured.input, with: z)) != nil,
           (try? captured.graph.replay()) != nil {
            lastDecode = .replayed
            return captured.output
        }
        let input = backend.tensor(z)
        if useGraphs, seenDecodes[z.shape] == backend.memoryGeneration {
            var output: B.Tensor?
            if let graph = try? backend.capture({ output = self.decoder(input, self.backend) }), (try? graph.replay()) != nil, let output {
                decodes[z.shape] = CapturedDecode(input: input, output: output, graph: graph)
                decodeOrder.append(z.shape)
                while decodeOrder.count > maximumCapturedLoops { decodes[decodeOrder.removeFirst()] = nil }
                lastDecode = .captured
                return output
            }
        }
        let output = decoder(input, backend)
        seenDecodes[z.shape] = backend.memoryGeneration
        lastDecode = .eager
        return output
    }
}
