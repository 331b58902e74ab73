import ArgumentParser
import KilnBackends
import KilnCore
import KilnPipeline
#if canImport(Glibc)
import Glibc
#endif

struct GenerateCommand: ParsableCommand, BackendJob {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate an image from a prompt (or from given prompt embeddings).",
        discussion: "With no --model, a small random-weight model runs so the whole pipeline can be seen working.")

    @OptionGroup var arguments: GenerationArguments

    @Option(help: "Where to write the PNG (batch items beyond the first get -1, -2, … before the extension).")
    var out: String = "kiln.png"

    @Option(help: "Write the prompt embeddings used (`prompt_embeds`, `pooled_prompt_embeds`) to this safetensors file.")
    var savePromptEmbeds: String?

    @Option(help: "Write the final latents (unpacked, before the VAE scaling and shift) as `latents` to this safetensors file.")
    var saveLatents: String?

    func run() throws {
        try reportingErrors {
            _ = try arguments.generationOptions()
            try runOnDevice(arguments.device, precision: arguments.precision, self)
        }
    }

    func execute<B: Backend>(on backend: B) throws {
        for path in [out, saveLatents, savePromptEmbeds].compactMap({ $0 }) { try FileIO.checkWritable(path) }
        let run = try arguments.prepare(on: backend)
        fputs("kiln: \(run.description)\n", stderr)
        if let savePromptEmbeds { try run.prompt.write(to: savePromptEmbeds) }
        let bar = ProgressBar(label: "denoising")
        let final = try run.pipeline.denoise(latents: run.noise, prompt: run.prompt, options: run.options) { bar.update($0, of: $1) }
        if let saveLatents {
            try SafeTensorsWriter.write([.init("latents", final)], to: saveLatents)
        }
        let decoded = run.pipeline.decodeToPNGRows(final)
        if decoded.nonFinite > 0 {
            fputs("kiln: warning: \(decoded.nonFinite) image values are NaN or infinite (written as black); the model or its inputs are broken\n", stderr)
        }
        for (item, rows) in decoded.images.enumerated() {
            let path = item == 0 ? out : GenerateCommand.numbered(out, item)
            try FileIO.write(PNG.encode(filteredRows: rows, width: decoded.width, height: decoded.height), to: path)
            print(path)
        }
    }

    /// `out.png` → `out-1.png`.
    static func numbered(_ path: String, _ index: Int) -> String {
        if let dot = path.lastIndex(of: "."), !path[dot...].contains("/") {
            return path[..<dot] + "-\(index)" + path[dot...]
        }
        return path + "-\(index)"
    }
}
