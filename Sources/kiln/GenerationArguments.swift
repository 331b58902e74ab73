import ArgumentParser
import KilnBackends
import KilnCore
import KilnCUDA
import KilnModels
import KilnPipeline
import KilnText
#if canImport(Glibc)
import Glibc
#endif

/// The options `generate` and `bench` share: which model, which image, which inputs.
struct GenerationArguments: ParsableArguments {
    @Option(help: "A diffusers FLUX folder, or a BFL single-file transformer (.safetensors) with ae.safetensors beside it.")
    var model: String?

    @Option(help: "The VAE: a BFL ae.safetensors file (default: beside a BFL transformer) or a diffusers vae/ folder (default: the model's).")
    var vae: String?

    @Option(help: "Run FLUX.1 at full size with seeded random weights instead of files: dev or schnell (for timing).")
    var randomWeights: String?

    @Option(help: "The prompt.")
    var prompt: String?

    @Option(help: "Read the prompt from this UTF-8 text file.")
    var promptFile: String?

    @Option(help: "T5 tokens the prompt is padded or truncated to (default 512 for dev, 256 for schnell).")
    var maxSequenceLength: Int?

    @Option(help: "A diffusers FLUX folder whose text encoders to use (default: the --model folder; with --random-weights, random prompt embeddings unless given).")
    var textEncoders: String?

    @Flag(help: "Do not read or write the on-disk cache of prompt embeddings.")
    var noPromptCache = false

    @Option(help: "Image width, a multiple of 16 (default 1024; 256 for the random tiny model).")
    var width: Int?

    @Option(help: "Image height, a multiple of 16 (default 1024; 256 for the random tiny model).")
    var height: Int?

    @Option(help: "Denoising steps (default 28 for dev, 4 for schnell).")
    var steps: Int?

    @Option(help: "Guidance scale (dev models only).")
    var guidance: Float = 3.5

    @Option(help: "Seed of the initial noise.")
    var seed: UInt64 = 0

    @Option(help: "Images per run (each with seed + index).")
    var batch: Int = 1

    @Option(help: "cpu or cuda.")
    var device: String = "cpu"

    @Option(help: "The transformer's linear layers and joint attention on cuda: bf16; fp8 (e4m3; weights per output channel, activations per row, attention per tensor); auto: fp8 on GPUs with FP8 tensor cores (sm_89+), else bf16.")
    var precision: String = "auto"

    @Option(help: "T5's linear layers: bf16, or fp8 (e4m3, per-row activations; needs FP8 linears, --precision auto or fp8): half of T5's 9.5 GB, a few ms less per prompt, a larger error (bench/results/session6-final).")
    var t5Precision: String = "bf16"

    @Option(help: "safetensors with `latents` float32 [B, 16, H/8, W/8]: the initial noise, unpacked.")
    var latents: String?

    @Option(help: "safetensors with `prompt_embeds` [B, T, joint_dim] and `pooled_prompt_embeds` [B, pooled_dim]; skips the text encoders.")
    var promptEmbeds: String?

    /// The size, steps and seed asked for, validated.
    func generationOptions() throws -> GenerationOptions {
        if let prompt, prompt.isEmpty, promptEmbeds == nil {
            throw KilnError.invalidArgument("the prompt is empty")
        }
        if prompt != nil && promptFile != nil {
            throw KilnError.invalidArgument("--prompt and --prompt-file exclude each other")
        }
        guard ["bf16", "fp8"].contains(t5Precision) else { throw KilnError.invalidArgument("unknown --t5-precision '\(t5Precision)' (use bf16 or fp8)") }
        if t5Precision == "fp8" && (device == "cpu" || precision == "bf16") {
            throw KilnError.invalidArgument("--t5-precision fp8 needs FP8 linears: --device cuda with --precision auto or fp8")
        }
        var options = GenerationOptions()
        let fallback = model == nil && randomWeights == nil ? 256 : 1024
        options.width = width ?? fallback
        options.height = height ?? fallback
        options.steps = steps
        options.guidance = guidance
        options.seed = seed
        options.batch = batch
        try options.validate()
        return options
    }

    /// Loads the model and every input. Cheap checks come first (configs, input files, memory), then the text encoders
    /// (released before the transformer loads, so their memory never adds to its), then the weights.
    /// `timeWarmEncoding`: where the text encoders ran (not a prompt-cache hit), encode the prompt a second time,
    /// uncached, and time that (the figure of a server that keeps its encoders loaded).
    func prepare<B: Backend>(on backend: B, timeWarmEncoding: Bool = false) throws -> PreparedGeneration<B> {
        let options = try generationOptions()
        if promptEmbeds != nil && (prompt != nil || promptFile != nil || maxSequenceLength != nil) {
            throw KilnError.invalidArgument("--prompt-embeds replaces the prompt: drop --prompt, --prompt-file and --max-sequence-length")
        }
        let files: ModelFiles?
        let random: RandomModel?
        if let model {
            guard randomWeights == nil else { throw KilnError.invalidArgument("--model and --random-weights exclude each other") }
            files = try ModelFiles(path: model, vaePath: vae)
            random = nil
        } else {
            files = nil
            random = try randomWeights.map { try RandomModel.full(variant: $0) } ?? .tiny
        }
        let config = files?.transformerConfig ?? random!.transformer
        let weightBytes = 4 * config.parameterCount
        if backend.name == "cpu", weightBytes > GenerationArguments.physicalMemory() * 9 / 10 {
            throw KilnError.invalidArgument("FLUX.1-\(config.variant) needs \(weightBytes >> 30) GiB for fp32 weights on the CPU; this machine has \(GenerationArguments.physicalMemory() >> 30) GiB (use --device cuda)")
        }
        let (h, w) = options.latentSize
        let givenNoise = try latents.map { try Checkpoint(path: $0).tensor("latents", shape: [batch, config.latentChannels, h, w]) }

        let textStart = MonotonicClock.now()
        let embeddings: PromptEmbeddings
        var warmRuns: [Double] = [], warmTotal = 0.0
        if let promptEmbeds {
            embeddings = try GenerationArguments.loadPromptEmbeddings(promptEmbeds, batch: batch)
        } else if let random, textEncoders == nil {
            embeddings = random.promptEmbeddings(for: try promptText() ?? "", batch: batch)
        } else {
            guard let text = try promptText() else {
                throw KilnError.invalidArgument("a prompt is needed: --prompt, --prompt-file or --prompt-embeds")
            }
            guard let folder = textEncoders ?? model.flatMap({ FileIO.isDirectory($0) ? $0 : nil }) else {
                throw KilnError.invalidArgument("a BFL transformer file carries no text encoders: pass --text-encoders DIR (a diffusers FLUX folder) or --prompt-embeds")
            }
            // FP8 T5 needs the backend's quantizable linears in FP8 (`--precision auto` on a GPU without FP8 cores has BF16).
            if t5Precision == "fp8" && (backend as? CUDABackend)?.linearPrecision != .fp8 {
                throw KilnError.invalidArgument("--t5-precision fp8 needs FP8 linears, and this run has \((backend as? CUDABackend)?.linearPrecision.rawValue ?? "fp32") ones")
            }
            let encoder = try PromptEncoder(folder: folder, backend: backend,
                                            cacheFolder: noPromptCache ? nil : try CacheDirectory.folder("prompt-embeds"), fp8T5: t5Precision == "fp8")
            let maxLength = maxSequenceLength ?? (config.guidanceEmbed ? 512 : 256)
            embeddings = try encoder.embeddings(for: text, maxLength: maxLength, batch: batch)
            if timeWarmEncoding, encoder.encodersLoaded {
                // Three more encodings, uncached: the first two capture the encoders' graphs (CLIP's, then T5's); the
                // last replays both, as a process that keeps its encoders does for every new prompt.
                let again = MonotonicClock.now()
                for _ in 0..<3 {
                    let start = MonotonicClock.now()
                    _ = try encoder.embeddings(for: text, maxLength: maxLength, batch: batch, cached: false)
                    warmRuns.append(MonotonicClock.now() - start)
                }
                warmTotal = MonotonicClock.now() - again
            }
        }
        // The encoders are gone once encoding is done; their memory goes back before the transformer loads.
        try backend.releaseCachedMemory()
        let textSeconds = MonotonicClock.now() - textStart - warmTotal
        guard embeddings.sequence.shape[2] == config.jointDim, embeddings.pooled.shape[1] == config.pooledDim else {
            throw KilnError.invalidArgument("prompt embeddings \(embeddings.sequence.shape) / \(embeddings.pooled.shape) do not fit the model (joint dim \(config.jointDim), pooled dim \(config.pooledDim))")
        }

        let pipeline: TextToImagePipeline<B>
        let description: String
        if let files, let model {
            pipeline = try TextToImagePipeline(files: files, backend: backend)
            description = "\(files.layout.rawValue) FLUX.1-\(files.variant) from \(model)"
        } else {
            pipeline = try random!.pipeline(backend: backend)
            description = randomWeights.map { "FLUX.1-\($0) at full size with RANDOM weights (for timing; the image is not meaningful)" }
                ?? "no --model given: running a small RANDOM-WEIGHT tiny model (its image is not meaningful)"
        }
        return PreparedGeneration(pipeline: pipeline, options: options, prompt: embeddings, noise: givenNoise ?? pipeline.initialNoise(options),
                                  description: description, textEncodingSeconds: textSeconds, warmTextEncodingRuns: warmRuns)
    }

    /// The prompt from --prompt or --prompt-file, if any.
    func promptText() throws -> String? {
        if let promptFile { return try PromptFile.read(promptFile) }
        return prompt
    }

    /// Physical memory of this machine in bytes.
    static func physicalMemory() -> Int {
        Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    static func loadPromptEmbeddings(_ path: String, batch: Int) throws -> PromptEmbeddings {
        let file = try Checkpoint(path: path)
        let sequence = try file.tensor("prompt_embeds")
        let pooled = try file.tensor("pooled_prompt_embeds")
        guard sequence.shape.count == 3, sequence.shape[0] == batch else {
            throw KilnError.wrongShape(name: "prompt_embeds", expected: [batch, -1, -1], found: sequence.shape)
        }
        guard pooled.shape.count == 2, pooled.shape[0] == batch else {
            throw KilnError.wrongShape(name: "pooled_prompt_embeds", expected: [batch, -1], found: pooled.shape)
        }
        return PromptEmbeddings(sequence: sequence, pooled: pooled)
    }
}

/// A loaded pipeline with its inputs, ready to run.
struct PreparedGeneration<B: Backend> {
    var pipeline: TextToImagePipeline<B>
    var options: GenerationOptions
    var prompt: PromptEmbeddings
    var noise: HostTensor
    /// What runs, for the user.
    var description: String
    /// Time spent in the text encoders (0 when embeddings were given or cached).
    var textEncodingSeconds: Double
    /// Uncached encodings of the prompt with the encoders loaded (when asked for): the last one with their graphs captured.
    var warmTextEncodingRuns: [Double]
    var warmTextEncodingSeconds: Double? { warmTextEncodingRuns.last }
}
