import KilnCore

/// CLIP's byte-level BPE tokenizer, reading `vocab.json` and `merges.txt` from a diffusers `tokenizer/` folder.
///
/// It reproduces transformers 5's `CLIPTokenizer` (built on `tokenizers`):
/// - `<|startoftext|>` and `<|endoftext|>` written in the text are matched first, in the raw text, as special tokens;
/// - the rest is normalized: NFC, then lower-cased one scalar at a time (runs of whitespace become one space, which
///   changes nothing here since whitespace only separates pieces);
/// - pre-tokenized with CLIP's pattern
///   `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+` (characters it
///   does not match, the whitespace, are dropped), each piece split again by GPT-2's pattern as `ByteLevel` does;
/// - each piece's UTF-8 bytes mapped to GPT-2's byte alphabet and merged by BPE with `</w>` on its last symbol.
/// The ftfy clean-up of OpenAI's original tokenizer and transformers 4's `BasicTokenizer` path (control characters
/// removed, CJK characters split apart) are not what transformers 5 does, so they are not done here either.
public final class CLIPTokenizer: PromptTokenizer {
    public let bosId: Int
    public let eosId: Int
    public let padId: Int
    public let unkId: Int
    /// `model_max_length` from `tokenizer_config.json` (77 for FLUX), when given.
    public let modelMaxLength: Int?
    public var prefixIds: [Int] { [bosId] }
    public var suffixIds: [Int] { [eosId] }

    let tokens: [String]
    /// Id of each byte's symbol, and of the symbol followed by `</w>`.
    let byteIds: [Int]
    let byteEndIds: [Int]
    /// (left id, right id) → (rank, merged id).
    let merges: [UInt64: (rank: Int32, id: Int32)]
    let added: AddedTokens
    var cache: [[UInt8]: [Int]] = [:]

    /// GPT-2's reversible map from bytes to printable characters.
    static let byteAlphabet: [Unicode.Scalar] = {
        var bs = Array(33...126) + Array(161...172) + Array(174...255)
        var cs = bs
        var n = 0
        for b in 0..<256 where !bs.contains(b) {
            bs.append(b)
            cs.append(256 + n)
            n += 1
        }
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        for (b, c) in zip(bs, cs) { table[b] = Unicode.Scalar(UInt32(c))! }
        return table
    }()

    /// Loads `vocab.json` and `merges.txt` (and the pad token and length from `tokenizer_config.json` or
    /// `special_tokens_map.json` when present) from `folder`.
    public convenience init(folder: String) throws {
        let vocabPath = try TokenizerFiles.require(folder, "vocab.json")
        let mergesPath = try TokenizerFiles.require(folder, "merges.txt")
        guard let entries = try FileIO.readJSON(vocabPath).object else {
            throw KilnError.corruptFile(path: vocabPath, reason: "expected an object of token → id")
        }
        var vocab: [(String, Int)] = []
        vocab.reserveCapacity(entries.count)
        for (token, value) in entries {
            guard let id = value.int, id >= 0 else {
                throw KilnError.corruptFile(path: vocabPath, reason: "id of '\(token)' is not a non-negative integer")
            }
            vocab.append((token, id))
        }
        var merges: [(String, String)] = []
        let text = try FileIO.readText(mergesPath)
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if line.hasPrefix("#version") || line.isEmpty { continue }
            let parts = line.split(separator: " ")
            guard parts.count == 2 else {
                throw KilnError.corruptFile(path: mergesPath, reason: "line \(number + 1) is not two symbols")
            }
            merges.append((String(parts[0]), String(parts[1])))
        }
        let pad = TokenizerFiles.tokenString(try TokenizerFiles.setting(folder, "pad_token")) ?? "<|endoftext|>"
        let maxLength = try TokenizerFiles.setting(folder, "model_max_length")?.int
        try self.init(vocab: vocab, merges: merges, padToken: pad, modelMaxLength: maxLength, origin: folder)
    }

    /// A tokenizer from a vocabulary (token, id) and merges in priority order.
    public init(vocab: [(String, Int)], merges mergeList: [(String, String)], padToken: String = "<|endoftext|>",
                modelMaxLength: Int? = nil, origin: String = "vocabulary") throws {
        var ids: [String: Int] = [:]
        var tokens = [String](repeating: "", count: (vocab.map(\.1).max() ?? -1) + 1)
        for (token, id) in vocab {
            ids[token] = id
            tokens[id] = token
        }
        func id(_ token: String) throws -> Int {
            guard let value = ids[token] else {
                throw KilnError.corruptFile(path: origin, reason: "the vocabulary has no token '\(token)'")
            }
            return value
        }
        bosId = try id("<|startoftext|>")
        eosId = try id("<|endoftext|>")
        unkId = eosId
        padId = try id(padToken)
        self.modelMaxLength = modelMaxLength.flatMap { $0 > 0 && $0 < 1 << 30 ? $0 : nil }
        self.tokens = tokens
        byteIds = CLIPTokenizer.byteAlphabet.map { ids[String($0)] ?? -1 }
        byteEndIds = CLIPTokenizer.byteAlphabet.map { ids[String($0) + "</w>"] ?? -1 }
        var table: [UInt64: (rank: Int32, id: Int32)] = [:]
        table.reserveCapacity(mergeList.count)
        for (rank, (a, b)) in mergeList.enumerated() {
            guard let left = ids[a], let right = ids[b], let merged = ids[a + b] else {
                throw KilnError.corruptFile(path: origin, reason: "merge '\(a) \(b)' uses or makes a token not in the vocabulary")
            }
            let key = UInt64(left) << 32 | UInt64(right)
            if table[key] == nil { table[key] = (Int32(rank), Int32(merged)) }
        }
        merges = table
        added = AddedTokens([("<|startoftext|>", bosId), ("<|endoftext|>", eosId)])
    }

    public func contentIds(_ text: String) -> [Int] {
        added.ids(text) { segment in
            var ids: [Int] = []
            for piece in CLIPTokenizer.pretokenize(TextUnicode.lowercased(TextUnicode.nfc(segment))) {
                for word in CLIPTokenizer.byteLevelSplit(piece) { ids += bpe(Array(word.utf8)) }
            }
            return ids
        }
    }

    /// CLIP's pattern, applied to normalized text: the pieces it matches, in order.
    static func pretokenize(_ text: String) -> [Substring] {
        let scalars = text.unicodeScalars
        var pieces: [Substring] = []
        var i = scalars.startIndex
        func starts(with literal: String, at index: String.UnicodeScalarView.Index) -> String.UnicodeScalarView.Index? {
            var j = index
            for s in literal.unicodeScalars {
                guard j < scalars.endIndex, scalars[j] == s else { return nil }
                j = scalars.index(after: j)
            }
            return j
        }
        while i < scalars.endIndex {
            let s = scalars[i]
            var end: String.UnicodeScalarView.Index?
            if s == "<" {
                end = starts(with: "<|startoftext|>", at: i) ?? starts(with: "<|endoftext|>", at: i)
            }
            if end == nil, s == "'" {
                for contraction in ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"] {
                    if let e = starts(with: contraction, at: i) { end = e; break }
                }
            }
            if end == nil {
                if TextUnicode.isLetter(s) {
                    var j = scalars.index(after: i)
                    while j < scalars.endIndex, TextUnicode.isLetter(scalars[j]) { j = scalars.index(after: j) }
                    end = j
                } else if TextUnicode.isNumber(s) {
                    end = scalars.index(after: i)
                } else if !TextUnicode.isWhitespace(s) {
                    var j = scalars.index(after: i)
                    while j < scalars.endIndex, !isLetterNumberOrSpace(scalars[j]) { j = scalars.index(after: j) }
                    end = j
                }
            }
            if let end {
                pieces.append(text[i..<end])
                i = end
            } else {
                i = scalars.index(after: i)
            }
        }
        return pieces
    }

    static func isLetterNumberOrSpace(_ s: Unicode.Scalar) -> Bool {
        TextUnicode.isLetter(s) || TextUnicode.isNumber(s) || TextUnicode.isWhitespace(s)
    }

    /// GPT-2's pattern as `ByteLevel(use_regex: true)` applies it to a piece without whitespace: contractions,
    /// letter runs, number runs, other runs. It only changes CLIP's pieces where a special token's text survived
    /// normalization (e.g. `<|ENDOFTEXT|>` lower-cased), splitting it into `<|`, `endoftext`, `|>`.
    static func byteLevelSplit(_ piece: Substring) -> [Substring] {
        let scalars = piece.unicodeScalars
        var out: [Substring] = []
        var i = scalars.startIndex
        while i < scalars.endIndex {
            let s = scalars[i]
            var end: Substring.UnicodeScalarView.Index?
            if s == "'" {
                for contraction in ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"] {
                    var j = i
                    var ok = true
                    for c in contraction.unicodeScalars {
                        if j < scalars.endIndex, scalars[j] == c { j = scalars.index(after: j) } else { ok = false; break }
                    }
                    if ok { end = j; break }
                }
            }
            if end == nil {
                let kind: (Unicode.Scalar) -> Bool
                if TextUnicode.isLetter(s) {
                    kind = TextUnicode.isLetter
                } else if TextUnicode.isNumber(s) {
                    kind = TextUnicode.isNumber
                } else {
                    kind = { !isLetterNumberOrSpace($0) }
                }
                var j = scalars.index(after: i)
                while j < scalars.endIndex, kind(scalars[j]) { j = scalars.index(after: j) }
                end = j
            }
            out.append(piece[i..<end!])
            i = end!
        }
        return out
    }

    /// BPE over one piece's bytes: lowest-ranked adjacent pair first (leftmost among equals), until none merges.
    func bpe(_ bytes: [UInt8]) -> [Int] {
        if let hit = cache[bytes] { return hit }
        var symbols = bytes.indices.map { i in i == bytes.count - 1 ? byteEndIds[Int(bytes[i])] : byteIds[Int(bytes[i])] }
        if symbols.contains(-1) {
            // A byte symbol missing from the vocabulary: tokenizers emits the unknown token for it.
            symbols = symbols.map { $0 == -1 ? unkId : $0 }
        }
        while symbols.count > 1 {
            var best: (rank: Int32, index: Int, id: Int32)? = nil
            for i in 0..<(symbols.count - 1) {
                if let merge = merges[UInt64(symbols[i]) << 32 | UInt64(symbols[i + 1])],
                   best == nil || merge.rank < best!.rank {
                    best = (merge.rank, i, merge.id)
                }
            }
            guard let best else { break }
            symbols[best.index] = Int(best.id)
            symbols.remove(at: best.index + 1)
        }
        cache[bytes] = symbols
        return symbols
    }

    /// Text for ids: `</w>` becomes a space, bytes are decoded, special tokens dropped.
    public func decode(_ ids: [Int]) -> String {
        var inverse = [UInt8](repeating: 0, count: 512)
        var known = [Bool](repeating: false, count: 512)
        for (b, c) in CLIPTokenizer.byteAlphabet.enumerated() {
            inverse[Int(c.value)] = UInt8(b)
            known[Int(c.value)] = true
        }
        var bytes: [UInt8] = []
        for id in ids where id >= 0 && id < tokens.count && id != bosId && id != eosId && id != padId {
            var token = tokens[id]
            var space = false
            if token.hasSuffix("</w>") {
                token.removeLast(4)
                space = true
            }
            for s in token.unicodeScalars where s.value < 512 && known[Int(s.value)] { bytes.append(inverse[Int(s.value)]) }
            if space { bytes.append(0x20) }
        }
        var text = String(decoding: bytes, as: UTF8.self)
        while text.hasSuffix(" ") { text.removeLast() }
        return text
    }
}
