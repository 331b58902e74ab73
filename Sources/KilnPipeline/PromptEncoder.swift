import KilnBackends
import KilnCore
import KilnText
#if canImport(Glibc)
import Glibc
#endif

/// Turns prompts into FLUX's embeddings with the model's text encoders, remembering results on disk: a repeated
/// (model, prompt, max length) skips both encoders. Entries are safetensors files named by a hash of the text
/// encoders' files (path, size, modification time in seconds), the prompt and the max length.
public final class PromptEncoder<B: Backend> {
    let folder: String
    let backend: B
    let cacheFolder: String?
    /// Whether T5 runs with FP8 linear layers (part of the cache key: its embeddings differ from BF16's).
    let fp8T5: Bool
    var encoders: TextEncoders<B>?
    /// Whether CLIP-L and T5 are loaded (the prompt cache can answer without them).
    public var encodersLoaded: Bool { encoders != nil }
    let modelKey: String

    /// Encoders of the diffusers folder `folder` (loaded on the first cache miss); `cacheFolder` nil disables the disk
    /// cache; `fp8T5` as in `TextEncoders.load`.
    public init(folder: String, backend: B, cacheFolder: String?, fp8T5: Bool = false) throws {
        self.folder = folder
        self.backend = backend
        self.cacheFolder = cacheFolder
        self.fp8T5 = fp8T5
        for part in ["tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2"] where !FileIO.isDirectory(FileIO.join(folder, part)) {
            throw KilnError.unreadable(path: FileIO.join(folder, part), reason: "no such folder: the model has no text encoders (pass --prompt-embeds)")
        }
        var identity = ""
        for part in ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"] {
            let path = FileIO.join(folder, part)
            for name in try FileIO.list(path) {
                var info = stat()
                guard stat(FileIO.join(path, name), &info) == 0 else { continue }
                identity += "\(part)/\(name):\(info.st_size):\(info.st_mtim.tv_sec);"
            }
        }
        modelKey = stableDigest([PromptEncoder.realPath(folder), identity] + (fp8T5 ? ["t5 fp8"] : []))
    }

    /// The embeddings of `prompt` repeated for `batch` images; T5 runs over `maxLength` tokens. `cached` false skips
    /// both the disk cache and the encoders' own memory of recent prompts.
    public func embeddings(for prompt: String, maxLength: Int, batch: Int, cached useCache: Bool = true) throws -> PromptEmbeddings {
        guard !prompt.isEmpty else { throw KilnError.invalidArgument("the prompt is empty") }
        guard (1...4096).contains(maxLength) else { throw KilnError.invalidArgument("max sequence length must be in 1...4096, got \(maxLength)") }
        let one = try (useCache ? cached(prompt, maxLength) : nil) ?? encode(prompt, maxLength, cached: useCache)
        return PromptEmbeddings(sequence: one.sequence.repeated(batch), pooled: one.pooled.repeated(batch))
    }

    func entryPath(_ prompt: String, _ maxLength: Int) -> String? {
        cacheFolder.map { FileIO.join($0, stableDigest([modelKey, String(maxLength), prompt]) + ".safetensors") }
    }

    func cached(_ prompt: String, _ maxLength: Int) -> PromptEmbeddings? {
        guard let path = entryPath(prompt, maxLength), FileIO.exists(path),
              let file = try? Checkpoint(path: path),
              file.metadata["prompt"] == prompt, file.metadata["max_length"] == String(maxLength),
              let sequence = try? file.tensor("prompt_embeds"), let pooled = try? file.tensor("pooled_prompt_embeds") else { return nil }
        return PromptEmbeddings(sequence: sequence, pooled: pooled)
    }

    func encode(_ prompt: String, _ maxLength: Int, cached: Bool) throws -> PromptEmbeddings {
        if encoders == nil { encoders = try TextEncoders.load(modelFolder: folder, backend: backend, fp8T5: fp8T5) }
        let result = try encoders!.encodeToHost(prompt: prompt, maxLength: maxLength, cached: cached)
        let embeddings = PromptEmbeddings(sequence: result.promptEmbeds, pooled: result.pooled)
        if let path = entryPath(prompt, maxLength) {
            // A cache that cannot be written only costs time: the result is still returned.
            try? embeddings.write(to: path, metadata: ["prompt": prompt, "max_length": String(maxLength)])
        }
        return embeddings
    }

    static func realPath(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}

extension PromptEmbeddings {
    /// Saves as `prompt_embeds` and `pooled_prompt_embeds` (the `--prompt-embeds` format).
    public func write(to path: String, metadata: [String: String] = [:]) throws {
        try SafeTensorsWriter.write([.init("prompt_embeds", sequence), .init("pooled_prompt_embeds", pooled)], metadata: metadata, to: path)
    }
}
