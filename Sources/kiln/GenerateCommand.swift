import ArgumentParser
import KilnBackends
import KilnCore
import KilnModels
import KilnPipeline
#if canImport(Glibc)
import Glibc
#endif

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate an image from a prompt (or from given prompt embeddings).",
        discussion: "With no --model, a small random-weight model runs so the whole pipeline can be seen working.")

    @Option(help: "A diffusers FLUX folder, or a BFL single-file transformer (.safetensors) with ae.safetensors beside it.")
    var model: String?

    @Option(help: "The BFL autoencoder file, when it is not ae.safetensors beside the transformer.")
    var vae: String?

    @Option(help: "The prompt.")
    var prompt: String?

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

    @Option(help: "Where to write the PNG (batch items beyond the first get -1, -2, … before the extension).")
    var out: String = "kiln.png"

    @Option(help: "safetensors with `latents` float32 [B, 16, H/8, W/8]: the initial noise, unpacked.")
    var latents: String?

    @Option(help: "safetensors with `prompt_embeds` [B, T, joint_dim] and `pooled_prompt_embeds` [B, pooled_dim]; skips the text encoders.")
    var promptEmbeds: String?

    @Option(help: "Write the final latents (unpacked, before the VAE scaling and shift) as `latents` to this safetensors file.")
    var saveLatents: String?

    func run() throws {
        try reportingErrors {
            guard device == "cpu" || device == "cuda" else {
                throw KilnError.invalidArgument("unknown device '\(device)' (use cpu or cuda)")
            }
            if device == "cuda" {
                throw KilnError.unsupported("--device cuda is not available yet: the CUDA backend arrives with the H100 issues; use --device cpu")
            }
            if let prompt, prompt.isEmpty, promptEmbeds == nil {
                throw KilnError.invalidArgument("the prompt is empty")
            }
            var options = GenerationOptions()
            if model == nil {
                options.width = 256
                options.height = 256
            }
            options.width = width ?? options.width
            options.height = height ?? options.height
            options.steps = steps
            options.guidance = guidance
            options.seed = seed
            options.batch = batch
            try options.validate()

            // Everything that can fail on bad input is read before any work starts.
            let backend = CPUBackend()
            let pipeline: TextToImagePipeline<CPUBackend>
            let description: String
            if let model {
                let files = try ModelFiles(path: model, vaePath: vae)
                pipeline = try TextToImagePipeline(files: files, backend: backend)
                description = "\(files.layout.rawValue) FLUX.1-\(files.variant) from \(model)"
            } else {
                pipeline = try TinyModel.pipeline(backend: backend)
                description = "no --model given: running a small RANDOM-WEIGHT tiny model (its image is not meaningful)"
            }
            let embeddings: PromptEmbeddings
            if let promptEmbeds {
                embeddings = try loadPromptEmbeddings(promptEmbeds, batch: batch)
            } else if model == nil {
                embeddings = TinyModel.promptEmbeddings(for: prompt ?? "", batch: batch)
            } else {
                throw KilnError.unsupported("text encoders are not available yet: pass --prompt-embeds FILE")
            }
            let noise: HostTensor
            if let latents {
                let (h, w) = options.latentSize
                noise = try Checkpoint(path: latents).tensor("latents", shape: [batch, pipeline.transformer.config.latentChannels, h, w])
            } else {
                noise = pipeline.initialNoise(options)
            }
            fputs("kiln: \(description)\n", stderr)

            let bar = ProgressBar(label: "denoising")
            let final = try pipeline.denoise(latents: noise, prompt: embeddings, options: options) { bar.update($0, of: $1) }
            if let saveLatents {
                try SafeTensorsWriter.write([.init("latents", final)], to: saveLatents)
            }
            let images = pipeline.decode(final)
            let (height, width) = (images.shape[2], images.shape[3])
            for item in 0..<batch {
                let image = HostTensor(shape: [3, height, width],
                                       data: Array(images.data[(item * 3 * height * width)..<((item + 1) * 3 * height * width)]))
                let path = item == 0 ? out : GenerateCommand.numbered(out, item)
                try FileIO.write(PNG.encode(image: image), to: path)
                print(path)
            }
        }
    }

    func loadPromptEmbeddings(_ path: String, batch: Int) throws -> PromptEmbeddings {
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

    /// `out.png` → `out-1.png`.
    static func numbered(_ path: String, _ index: Int) -> String {
        if let dot = path.lastIndex(of: "."), !path[dot...].contains("/") {
            return path[..<dot] + "-\(index)" + path[dot...]
        }
        return path + "-\(index)"
    }
}
