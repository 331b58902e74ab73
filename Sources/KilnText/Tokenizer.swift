import KilnCore

/// Token ids of one prompt, padded and truncated for an encoder.
public struct TokenizedPrompt: Equatable, Sendable {
    /// Exactly `maxLength` ids: special tokens, content, padding.
    public var ids: [Int]
    /// The content ids that truncation dropped (empty when the prompt fit).
    public var removedIds: [Int]
    public var truncated: Bool { !removedIds.isEmpty }
}

/// What the pipeline needs from a tokenizer; `CLIPTokenizer` and `T5Tokenizer` implement it.
public protocol PromptTokenizer {
    /// Ids put before the content (`<|startoftext|>` for CLIP, nothing for T5).
    var prefixIds: [Int] { get }
    /// Ids put after the content (`<|endoftext|>` for CLIP, `</s>` for T5).
    var suffixIds: [Int] { get }
    /// The id that pads a sequence to its length.
    var padId: Int { get }
    /// The ids of the text alone, without special tokens.
    func contentIds(_ text: String) -> [Int]
    /// Text for ids (special tokens dropped), for messages.
    func decode(_ ids: [Int]) -> String
}

extension PromptTokenizer {
    /// Ids as the tokenizer returns them with special tokens and no padding (transformers' `tokenizer(text).input_ids`).
    public func encode(_ text: String) -> [Int] {
        prefixIds + contentIds(text) + suffixIds
    }

    /// Ids padded to `maxLength` and truncated to fit, as transformers does with
    /// `padding="max_length", max_length=maxLength, truncation=True`: the content is cut to leave room for the
    /// special tokens, then padded on the right.
    public func encode(_ text: String, maxLength: Int) throws -> TokenizedPrompt {
        let special = prefixIds.count + suffixIds.count
        guard maxLength >= special else {
            throw KilnError.invalidArgument("max length \(maxLength) leaves no room for the \(special) special tokens")
        }
        let content = contentIds(text)
        let kept = min(content.count, maxLength - special)
        var ids = prefixIds + content[..<kept] + suffixIds
        ids += [Int](repeating: padId, count: maxLength - ids.count)
        return TokenizedPrompt(ids: ids, removedIds: Array(content[kept...]))
    }
}

/// Splits text around the added (special) tokens, which `tokenizers` matches in the raw text before any
/// normalization: leftmost match first, the longest one where several start at the same place.
struct AddedTokens {
    let tokens: [(text: [UInt8], id: Int)]
    let firstBytes: Set<UInt8>

    init(_ tokens: [(String, Int)]) {
        self.tokens = tokens.map { (Array($0.0.utf8), $0.1) }.sorted { $0.text.count > $1.text.count }
        firstBytes = Set(self.tokens.compactMap { $0.text.first })
    }

    enum Part {
        case text(Substring)
        case special(Int)
    }

    /// Ids of `text`: added tokens as their ids, the text between them through `encode`.
    func ids(_ text: String, encode: (Substring) -> [Int]) -> [Int] {
        var ids: [Int] = []
        for part in split(text) {
            switch part {
            case let .special(id): ids.append(id)
            case let .text(segment): ids += encode(segment)
            }
        }
        return ids
    }

    func split(_ text: String) -> [Part] {
        if tokens.isEmpty { return [.text(text[...])] }
        let bytes = Array(text.utf8)
        var parts: [Part] = []
        var start = 0
        var i = 0
        outer: while i < bytes.count {
            if firstBytes.contains(bytes[i]) {
                for token in tokens where i + token.text.count <= bytes.count {
                    if bytes[i..<(i + token.text.count)].elementsEqual(token.text) {
                        if start < i { parts.append(.text(Self.substring(text, start, i))) }
                        parts.append(.special(token.id))
                        i += token.text.count
                        start = i
                        continue outer
                    }
                }
            }
            i += 1
        }
        if start < bytes.count { parts.append(.text(Self.substring(text, start, bytes.count))) }
        return parts
    }

    /// The text between two byte offsets; both are scalar boundaries because tokens are whole strings.
    static func substring(_ text: String, _ from: Int, _ to: Int) -> Substring {
        let utf8 = text.utf8
        let a = utf8.index(utf8.startIndex, offsetBy: from)
        let b = utf8.index(a, offsetBy: to - from)
        return text[a..<b]
    }
}

/// Reads a tokenizer file, naming it when it is absent.
enum TokenizerFiles {
    static func require(_ folder: String, _ name: String) throws -> String {
        let path = FileIO.join(folder, name)
        guard FileIO.exists(path) else {
            throw KilnError.unreadable(path: path, reason: "tokenizer file \(name) is missing")
        }
        return path
    }

    /// A token string from a `tokenizer_config.json` / `special_tokens_map.json` entry (a string or `{"content": ...}`).
    static func tokenString(_ value: JSON?) -> String? {
        if let s = value?.string { return s }
        return value?["content"]?.string
    }

    /// The value of `key` in `tokenizer_config.json`, else `special_tokens_map.json`, when present.
    static func setting(_ folder: String, _ key: String) throws -> JSON? {
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = FileIO.join(folder, name)
            if FileIO.exists(path), let value = try FileIO.readJSON(path)[key], value != .null { return value }
        }
        return nil
    }
}

/// Reads prompt text from a file: it must be valid UTF-8.
public enum PromptFile {
    public static func read(_ path: String) throws -> String {
        try FileIO.readText(path)
    }
}
