import KilnCore

/// T5's SentencePiece unigram tokenizer, reading `spiece.model` (or, without it, `tokenizer.json`) from a diffusers
/// `tokenizer_2/` folder.
///
/// It reproduces transformers 5's `T5TokenizerFast` (built on `tokenizers`):
/// - special tokens written in the text (`<pad>`, `</s>`, `<unk>`, `<extra_id_0>`…`<extra_id_99>`) are matched first;
/// - the rest is normalized with the model's precompiled charsmap (nmt_nfkc: NFKC plus SentencePiece's clean-up),
///   grapheme by grapheme as `tokenizers`' `Precompiled` normalizer does;
/// - split on whitespace; each word gets `▁` in front (unless it starts with one) and is split before every `▁`;
/// - each piece is segmented by Viterbi over the piece scores (ties keep the earlier candidate); a character no piece
///   covers is `<unk>` with score min − 10, and adjacent unknowns fuse into one `<unk>`;
/// - `</s>` is appended.
/// SentencePiece's own encoder differs from this on a few inputs (it normalizes by longest match rather than by
/// grapheme, and does not treat `</s>` etc. in the text as special); transformers is the reference here.
public final class T5Tokenizer: PromptTokenizer {
    public let eosId: Int
    public let padId: Int
    public let unkId: Int
    /// `model_max_length` from `tokenizer_config.json`, when given.
    public let modelMaxLength: Int?
    public var prefixIds: [Int] { [] }
    public var suffixIds: [Int] { [eosId] }
    /// Token strings by id (pieces, then `<extra_id_99>` … `<extra_id_0>`).
    public let tokens: [String]
    /// Which file the vocabulary came from.
    public let source: String

    let scores: [Double]
    let unkScore: Double
    let trie: ByteTrie
    let charsmap: PrecompiledCharsmap?
    let added: AddedTokens
    let specialIds: Set<Int>

    /// Loads `spiece.model` from `folder`, or `tokenizer.json` when there is no `spiece.model`.
    public convenience init(folder: String) throws {
        let spiece = FileIO.join(folder, "spiece.model")
        let json = FileIO.join(folder, "tokenizer.json")
        let maxLength = try TokenizerFiles.setting(folder, "model_max_length")?.int
        if FileIO.exists(spiece) || !FileIO.exists(json) {
            try self.init(spieceModel: try TokenizerFiles.require(folder, "spiece.model"), modelMaxLength: maxLength)
        } else {
            try self.init(tokenizerJSON: json, modelMaxLength: maxLength)
        }
    }

    /// From a SentencePiece model: its pieces, then 100 sentinels `<extra_id_99>` … `<extra_id_0>` as T5 adds them.
    public convenience init(spieceModel path: String, extraIds: Int = 100, modelMaxLength: Int? = nil) throws {
        let model = try SentencePieceModel(path: path)
        guard model.modelType == 1 else { throw KilnError.unsupported("\(path): not a unigram SentencePiece model") }
        guard !model.byteFallback else { throw KilnError.unsupported("\(path): byte fallback is not supported") }
        var vocab = model.pieces.map { ($0.text, Double($0.score)) }
        var special = model.pieces.enumerated()
            .filter { $0.element.type == .control || $0.element.type == .unknown }
            .map { ($0.element.text, $0.offset) }
        for i in stride(from: extraIds - 1, through: 0, by: -1) {
            special.append(("<extra_id_\(i)>", vocab.count))
            vocab.append(("<extra_id_\(i)>", 0))
        }
        guard let unk = model.pieces.firstIndex(where: { $0.type == .unknown }) else {
            throw KilnError.corruptFile(path: path, reason: "no unknown piece")
        }
        let charsmap: PrecompiledCharsmap?
        do {
            charsmap = model.precompiledCharsmap.isEmpty ? nil : try PrecompiledCharsmap(model.precompiledCharsmap)
        } catch let error as ProtobufError {
            throw KilnError.corruptFile(path: path, reason: error.reason)
        }
        try self.init(vocab: vocab, unkId: unk, addedTokens: special, charsmap: charsmap,
                      modelMaxLength: modelMaxLength, source: path)
    }

    /// From a `tokenizers` `tokenizer.json` with a Unigram model and a Precompiled normalizer.
    public convenience init(tokenizerJSON path: String, modelMaxLength: Int? = nil) throws {
        let root = try FileIO.readJSON(path)
        guard let model = root["model"], model["type"]?.string == "Unigram", let entries = model["vocab"]?.array else {
            throw KilnError.corruptFile(path: path, reason: "expected a Unigram model with a vocab")
        }
        if model["byte_fallback"]?.bool == true { throw KilnError.unsupported("\(path): byte fallback is not supported") }
        var vocab: [(String, Double)] = []
        vocab.reserveCapacity(entries.count)
        for entry in entries {
            guard let pair = entry.array, pair.count == 2, let text = pair[0].string, let score = pair[1].number else {
                throw KilnError.corruptFile(path: path, reason: "vocab entry \(entry.serialized) is not [piece, score]")
            }
            vocab.append((text, score))
        }
        guard let unk = model["unk_id"]?.int, unk >= 0, unk < vocab.count else {
            throw KilnError.corruptFile(path: path, reason: "no unk_id")
        }
        var added: [(String, Int)] = []
        for token in root["added_tokens"]?.array ?? [] {
            if let text = token["content"]?.string, let id = token["id"]?.int { added.append((text, id)) }
        }
        var charsmap: PrecompiledCharsmap? = nil
        func findCharsmap(_ normalizer: JSON?) throws {
            guard let normalizer, normalizer != .null else { return }
            switch normalizer["type"]?.string {
            case "Precompiled":
                guard let encoded = normalizer["precompiled_charsmap"]?.string, let blob = Base64.decode(encoded) else {
                    throw KilnError.corruptFile(path: path, reason: "Precompiled normalizer without a valid charsmap")
                }
                do { charsmap = try PrecompiledCharsmap(blob) } catch let error as ProtobufError {
                    throw KilnError.corruptFile(path: path, reason: error.reason)
                }
            case "Sequence":
                for inner in normalizer["normalizers"]?.array ?? [] { try findCharsmap(inner) }
            case let other:
                throw KilnError.unsupported("\(path): normalizer \(other ?? "?") is not supported (use spiece.model)")
            }
        }
        try findCharsmap(root["normalizer"])
        try self.init(vocab: vocab, unkId: unk, addedTokens: added, charsmap: charsmap,
                      modelMaxLength: modelMaxLength, source: path)
    }

    init(vocab: [(String, Double)], unkId: Int, addedTokens: [(String, Int)], charsmap: PrecompiledCharsmap?,
         modelMaxLength: Int?, source: String) throws {
        let tokens = vocab.map(\.0)
        func id(of token: String) throws -> Int {
            guard let value = tokens.firstIndex(of: token) else {
                throw KilnError.corruptFile(path: source, reason: "the vocabulary has no token '\(token)'")
            }
            return value
        }
        eosId = try id(of: "</s>")
        padId = try id(of: "<pad>")
        self.tokens = tokens
        scores = vocab.map(\.1)
        unkScore = (scores.min() ?? 0) - 10
        var trie = ByteTrie()
        for (id, token) in tokens.enumerated() { trie.insert(Array(token.utf8), id: id) }
        self.trie = trie
        self.charsmap = charsmap
        self.unkId = unkId
        self.source = source
        added = AddedTokens(addedTokens)
        specialIds = Set(addedTokens.map(\.1))
        self.modelMaxLength = modelMaxLength.flatMap { $0 > 0 && $0 < 1 << 30 ? $0 : nil }
    }

    public func contentIds(_ text: String) -> [Int] {
        added.ids(text) { segment in
            var ids: [Int] = []
            let normalized = charsmap?.normalize(segment) ?? String(segment)
            for word in normalized.unicodeScalars.split(whereSeparator: TextUnicode.isWhitespace) {
                var bytes = Array(Substring(word).utf8)
                if !bytes.starts(with: T5Tokenizer.metaspace) { bytes = T5Tokenizer.metaspace + bytes }
                // Split before every ▁ (tokenizers' Metaspace with split: true).
                var start = 0
                var i = 3
                while i <= bytes.count {
                    if i == bytes.count || bytes[i..<min(i + 3, bytes.count)].elementsEqual(T5Tokenizer.metaspace) {
                        ids += viterbi(bytes[start..<i])
                        start = i
                        i += 3
                    } else {
                        i += 1
                    }
                }
            }
            return ids
        }
    }

    static let metaspace: [UInt8] = Array("\u{2581}".utf8)

    /// The best segmentation of one piece (tokenizers' `Unigram::encode_optimized`).
    func viterbi(_ piece: ArraySlice<UInt8>) -> [Int] {
        let bytes = Array(piece)
        let n = bytes.count
        var bestScore = [Double](repeating: 0, count: n + 1)
        var bestStart = [Int](repeating: -1, count: n + 1)
        var bestId = [Int](repeating: -1, count: n + 1)
        var start = 0
        while start < n {
            let here = bestScore[start]
            let charLength = T5Tokenizer.utf8Length(bytes[start])
            var hasSingle = false
            trie.prefixes(of: bytes, from: start) { end, id in
                let score = here + scores[id]
                if bestStart[end] < 0 || score > bestScore[end] {
                    bestScore[end] = score
                    bestStart[end] = start
                    bestId[end] = id
                }
                if end - start == charLength { hasSingle = true }
            }
            if !hasSingle {
                let end = min(start + charLength, n)
                let score = here + unkScore
                if bestStart[end] < 0 || score > bestScore[end] {
                    bestScore[end] = score
                    bestStart[end] = start
                    bestId[end] = unkId
                }
            }
            start += charLength
        }
        var ids: [Int] = []
        var end = n
        while end > 0 {
            let id = bestId[end]
            if !(id == unkId && ids.last == unkId) { ids.append(id) }
            end = bestStart[end]
        }
        return ids.reversed()
    }

    static func utf8Length(_ lead: UInt8) -> Int {
        switch lead {
        case 0xF0...: return 4
        case 0xE0...: return 3
        case 0xC0...: return 2
        default: return 1
        }
    }

    /// Text for ids: pieces joined, `▁` as spaces, special tokens dropped.
    public func decode(_ ids: [Int]) -> String {
        var text = ""
        for id in ids where id >= 0 && id < tokens.count && !specialIds.contains(id) { text += tokens[id] }
        text = String(text.unicodeScalars.map { $0 == "\u{2581}" ? " " : Character($0) })
        while text.hasPrefix(" ") { text.removeFirst() }
        return text
    }
}

/// A byte trie over token strings, for the prefix searches of the Viterbi pass.
struct ByteTrie {
    /// (node << 8 | byte) → child node.
    var children: [Int: Int32] = [:]
    /// Token id ending at each node, or -1.
    var values: [Int32] = [-1]

    mutating func insert(_ key: [UInt8], id: Int) {
        var node = 0
        for byte in key {
            let slot = node << 8 | Int(byte)
            if let child = children[slot] {
                node = Int(child)
            } else {
                values.append(-1)
                children[slot] = Int32(values.count - 1)
                node = values.count - 1
            }
        }
        if values[node] < 0 { values[node] = Int32(id) }
    }

    /// Calls `body(end, id)` for each token that `bytes[from..<end]` spells, shortest first.
    func prefixes(of bytes: [UInt8], from: Int, _ body: (Int, Int) -> Void) {
        var node = 0
        var i = from
        while i < bytes.count, let child = children[node << 8 | Int(bytes[i])] {
            node = Int(child)
            i += 1
            if values[node] >= 0 { body(i, Int(values[node])) }
        }
    }
}

/// Standard base64 (with or without padding), as `tokenizer.json` stores the precompiled charsmap.
enum Base64 {
    static func decode(_ text: String) -> [UInt8]? {
        var table = [Int8](repeating: -1, count: 256)
        for (i, c) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8.enumerated() { table[Int(c)] = Int8(i) }
        var out: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for c in text.utf8 {
            if c == UInt8(ascii: "=") { break }
            if c == 0x0A || c == 0x0D { continue }
            let v = table[Int(c)]
            guard v >= 0 else { return nil }
            buffer = buffer << 6 | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8((buffer >> UInt32(bits)) & 0xFF))
            }
        }
        return out
    }
}
