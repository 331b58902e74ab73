/// SentencePiece's precompiled normalization map: a darts-clone double-array trie over UTF-8 byte strings whose
/// values index NUL-terminated replacement strings. Applied as `tokenizers`' `Precompiled` normalizer does.
struct PrecompiledCharsmap {
    let units: [UInt32]
    let normalized: [UInt8]

    init(_ blob: [UInt8]) throws {
        guard blob.count >= 4 else { throw ProtobufError(reason: "precompiled charsmap shorter than its header") }
        let trieBytes = Int(UInt32(blob[0]) | UInt32(blob[1]) << 8 | UInt32(blob[2]) << 16 | UInt32(blob[3]) << 24)
        guard trieBytes % 4 == 0, 4 + trieBytes <= blob.count else {
            throw ProtobufError(reason: "precompiled charsmap trie size \(trieBytes) does not fit")
        }
        var units = [UInt32](repeating: 0, count: trieBytes / 4)
        for i in 0..<units.count {
            let o = 4 + 4 * i
            units[i] = UInt32(blob[o]) | UInt32(blob[o + 1]) << 8 | UInt32(blob[o + 2]) << 16 | UInt32(blob[o + 3]) << 24
        }
        self.units = units
        normalized = Array(blob[(4 + trieBytes)...])
    }

    /// The replacement of the shortest key that is a prefix of `key`, as `spm_precompiled::Precompiled::transform`.
    func transform<Bytes: Collection>(_ key: Bytes) -> Substring.UTF8View? where Bytes.Element == UInt8 {
        guard !units.isEmpty else { return nil }
        var node = Int(Self.offset(units[0]))
        for c in key {
            if c == 0 { break }
            node ^= Int(c)
            guard node < units.count else { return nil }
            let unit = units[node]
            guard Self.label(unit) == UInt32(c) else { return nil }
            node ^= Int(Self.offset(unit))
            guard node < units.count else { return nil }
            if (unit >> 8) & 1 == 1 {
                let start = Int(units[node] & 0x7FFF_FFFF)
                guard start < normalized.count else { return nil }
                var end = start
                while end < normalized.count, normalized[end] != 0 { end += 1 }
                return Substring(decoding: normalized[start..<end], as: UTF8.self).utf8
            }
        }
        return nil
    }

    static func label(_ unit: UInt32) -> UInt32 { unit & (UInt32(1) << 31 | 0xFF) }
    static func offset(_ unit: UInt32) -> UInt32 { (unit >> 10) << ((unit & (1 << 9)) >> 6) }

    /// Normalizes text grapheme by grapheme: a grapheme shorter than 6 bytes that has a mapping (of its shortest
    /// mapped prefix) is replaced whole; otherwise each scalar is replaced by its mapping or kept.
    func normalize(_ text: Substring) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        for grapheme in text {
            let bytes = grapheme.utf8
            if bytes.count < 6, let replacement = transform(bytes) {
                out += replacement
                continue
            }
            for scalar in grapheme.unicodeScalars {
                let scalarBytes = Array(String(scalar).utf8)
                if let replacement = transform(scalarBytes) {
                    out += replacement
                } else {
                    out += scalarBytes
                }
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
