#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KilnBackends
import KilnCore
import KilnModels

/// FLUX's two text encoders with their tokenizers, loaded from a diffusers model folder
/// (`tokenizer/`, `tokenizer_2/`, `text_encoder/`, `text_encoder_2/`), turning a prompt into what the transformer
/// needs, as `FluxPipeline.encode_prompt` does.
public final class TextEncoders<B: Backend> {
    public let backend: B
    public let clipTokenizer: CLIPTokenizer
    public let t5Tokenizer: T5Tokenizer
    public let clip: CLIPTextModel<B>
    public let t5: T5Encoder<B>
    /// CLIP's sequence length (the tokenizer's `model_max_length`, 77).
    public let clipLength: Int
    /// Where truncation warnings go; stderr by default, as diffusers logs them.
    public var warn: (String) -> Void = { fputs("kiln: warning: \($0)\n", stderr) }
    /// Results by (max length, prompt), kept as host tensors so repeated prompts skip the encoders.
    var cache: [String: (promptEmbeds: HostTensor, pooled: HostTensor)] = [:]
    /// How many prompts the cache keeps (0 turns it off).
    public var cacheLimit = 16

    public init(backend: B, clipTokenizer: CLIPTokenizer, t5Tokenizer: T5Tokenizer, clip: CLIPTextModel<B>, t5: T5Encoder<B>) {
        self.backend = backend
        self.clipTokenizer = clipTokenizer
        self.t5Tokenizer = t5Tokenizer
        self.clip = clip
        self.t5 = t5
        clipLength = min(clipTokenizer.modelMaxLength ?? 77, clip.config.maxPositions)
    }

    /// Loads both tokenizers and encoders from a diffusers FLUX folder; `fp8T5`: T5's linear layers in FP8 where the
    /// backend's quantizable linears are (CLIP is too small for FP8 to pay).
    public static func load(modelFolder: String, backend: B, fp8T5: Bool = false) throws -> TextEncoders<B> {
        let clipTokenizer = try CLIPTokenizer(folder: FileIO.join(modelFolder, "tokenizer"))
        let t5Tokenizer = try T5Tokenizer(folder: FileIO.join(modelFolder, "tokenizer_2"))
        let clip = try CLIPTextModel(folder: FileIO.join(modelFolder, "text_encoder"), backend: backend)
        let t5 = try T5Encoder(folder: FileIO.join(modelFolder, "text_encoder_2"), backend: backend, quantizable: fp8T5)
        return TextEncoders(backend: backend, clipTokenizer: clipTokenizer, t5Tokenizer: t5Tokenizer, clip: clip, t5: t5)
    }

    /// CLIP ids padded/truncated to 77, warning when the prompt was cut.
    public func clipIds(_ prompt: String) throws -> [Int] {
        let tokens = try clipTokenizer.encode(prompt, maxLength: clipLength)
        if tokens.truncated {
            warn("The following part of your input was truncated because CLIP can only handle sequences up to "
                 + "\(clipLength) tokens: \(clipTokenizer.decode(tokens.removedIds))")
        }
        return tokens.ids
    }

    /// T5 ids padded/truncated to `maxLength` (512 for dev, 256 for schnell), warning when the prompt was cut.
    public func t5Ids(_ prompt: String, maxLength: Int) throws -> [Int] {
        let tokens = try t5Tokenizer.encode(prompt, maxLength: maxLength)
        if tokens.truncated {
            warn("The following part of your input was truncated because `max_sequence_length` is set to "
                 + "\(maxLength) tokens: \(t5Tokenizer.decode(tokens.removedIds))")
        }
        return tokens.ids
    }

    /// The T5 sequence `[1, maxLength, d_model]` (4096 for FLUX) and CLIP's pooled vector `[1, hidden]` (768).
    public func encode(prompt: String, maxLength: Int) throws -> (promptEmbeds: B.Tensor, pooled: B.Tensor) {
        let host = try encodeToHost(prompt: prompt, maxLength: maxLength)
        return (backend.tensor(host.promptEmbeds), backend.tensor(host.pooled))
    }

    /// `encode` with the results on the host (for saving, or caching across runs); `cached` false runs both encoders
    /// even for a prompt seen before (timing them).
    public func encodeToHost(prompt: String, maxLength: Int, cached: Bool = true) throws -> (promptEmbeds: HostTensor, pooled: HostTensor) {
        let key = "\(maxLength)\u{0}\(prompt)"
        if cached, let hit = cache[key] { return hit }
        let pooled = try clip(ids: clipIds(prompt), backend).pooled
        let sequence = try t5(ids: t5Ids(prompt, maxLength: maxLength), backend)
        let result = (promptEmbeds: backend.host(sequence), pooled: backend.host(pooled))
        if cacheLimit > 0 {
            if cache.count >= cacheLimit { cache.removeAll() }
            cache[key] = result
        }
        return result
    }
}
