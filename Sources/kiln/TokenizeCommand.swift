import ArgumentParser
import KilnCore
import KilnText
#if canImport(Glibc)
import Glibc
#endif

/// `kiln tokenize`: the ids a prompt becomes, as a JSON array.
struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Print the token ids of a prompt as a JSON array.",
        discussion: """
            Without --raw the ids are padded and truncated as the pipeline feeds them to the encoder (CLIP: 77; \
            T5: 512 for FLUX.1-dev, 256 for schnell, or --max-length). With --raw they are what the tokenizer \
            returns: special tokens added, no padding, no truncation.
            """)

    enum Encoder: String, ExpressibleByArgument, CaseIterable {
        case clip, t5
    }

    @Option(help: "A diffusers FLUX folder (with tokenizer/ and tokenizer_2/), or a tokenizer folder itself.")
    var model: String

    @Option(help: "Which tokenizer: clip (tokenizer/) or t5 (tokenizer_2/).")
    var encoder: Encoder

    @Option(help: "The prompt.")
    var text: String?

    @Option(name: .customLong("text-file"), help: "Read the prompt from a UTF-8 file instead.")
    var textFile: String?

    @Flag(help: "Ids as the tokenizer returns them: special tokens, no padding or truncation.")
    var raw = false

    @Option(name: .customLong("max-length"), help: "Pad/truncate to this many tokens (default: as the pipeline does).")
    var maxLength: Int?

    func validate() throws {
        guard (text == nil) != (textFile == nil) else { throw ValidationError("give exactly one of --text and --text-file") }
        if let maxLength, maxLength < 2 { throw ValidationError("--max-length must be at least 2") }
        if raw && maxLength != nil { throw ValidationError("--raw takes no --max-length") }
    }

    func run() throws {
        try reportingErrors {
            let prompt = try text ?? PromptFile.read(textFile!)
            let ids: [Int]
            switch encoder {
            case .clip:
                let tokenizer = try CLIPTokenizer(folder: TokenizeCommand.folder(model, sub: "tokenizer", marker: "vocab.json"))
                ids = try TokenizeCommand.ids(tokenizer, prompt, raw: raw, length: maxLength ?? tokenizer.modelMaxLength ?? 77,
                                              limit: "CLIP can only handle sequences up to")
            case .t5:
                let tokenizer = try T5Tokenizer(folder: TokenizeCommand.folder(model, sub: "tokenizer_2", marker: "spiece.model"))
                ids = try TokenizeCommand.ids(tokenizer, prompt, raw: raw, length: maxLength ?? TokenizeCommand.t5Length(model),
                                              limit: "`max_sequence_length` is set to")
            }
            print("[" + ids.map(String.init).joined(separator: ",") + "]")
        }
    }

    static func ids(_ tokenizer: some PromptTokenizer, _ prompt: String, raw: Bool, length: Int, limit: String) throws -> [Int] {
        if raw { return tokenizer.encode(prompt) }
        let tokens = try tokenizer.encode(prompt, maxLength: length)
        if tokens.truncated {
            fputs("kiln: warning: The following part of your input was truncated because \(limit) \(length) tokens: "
                  + "\(tokenizer.decode(tokens.removedIds))\n", stderr)
        }
        return tokens.ids
    }

    /// `model/sub` when it exists, else `model` itself when it holds the tokenizer's files.
    static func folder(_ model: String, sub: String, marker: String) throws -> String {
        let nested = FileIO.join(model, sub)
        if FileIO.isDirectory(nested) { return nested }
        if FileIO.exists(FileIO.join(model, marker)) || FileIO.exists(FileIO.join(model, "tokenizer.json")) { return model }
        throw KilnError.unreadable(path: nested, reason: "no \(sub)/ folder (and \(model) is not a tokenizer folder)")
    }

    /// The pipeline's default T5 length: 256 for schnell (no guidance embedding), 512 otherwise.
    static func t5Length(_ model: String) -> Int {
        let config = FileIO.join(FileIO.join(model, "transformer"), "config.json")
        if let json = try? FileIO.readJSON(config), json["guidance_embeds"]?.bool == false { return 256 }
        return 512
    }
}
