/// The few Unicode services the tokenizers need, from the standard library's own tables (no Foundation, no ICU).
enum TextUnicode {
    /// `\p{L}`: general category Lu, Ll, Lt, Lm or Lo.
    static func isLetter(_ s: Unicode.Scalar) -> Bool {
        if s.value < 0x80 { return (s.value | 0x20) >= 0x61 && (s.value | 0x20) <= 0x7A }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }

    /// `\p{N}`: general category Nd, Nl or No.
    static func isNumber(_ s: Unicode.Scalar) -> Bool {
        if s.value < 0x80 { return s.value >= 0x30 && s.value <= 0x39 }
        switch s.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    /// `\s` of the Oniguruma patterns in `tokenizers`, and Rust's `char::is_whitespace`: the White_Space property.
    static func isWhitespace(_ s: Unicode.Scalar) -> Bool {
        if s.value < 0x80 { return s.value == 0x20 || (s.value >= 0x09 && s.value <= 0x0D) }
        return s.properties.isWhitespace
    }

    /// Canonical composition (NFC).
    static func nfc(_ text: Substring) -> String {
        if text.utf8.allSatisfy({ $0 < 0x80 }) { return String(text) }
        // `_nfcCodeUnits` is the standard library's public (underscored) NFC; it always yields valid UTF-8.
        return String(decoding: String(text)._nfcCodeUnits, as: UTF8.self)
    }

    /// Lower-casing one scalar at a time with the full (unconditional) mappings, as Rust's `char::to_lowercase`
    /// does for `tokenizers`' Lowercase normalizer: no context rules, so a final capital sigma becomes σ, not ς.
    static func lowercased(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        for s in text.unicodeScalars {
            if s.value < 0x80 {
                out.append(s.value >= 0x41 && s.value <= 0x5A ? Unicode.Scalar(s.value + 0x20)! : s)
            } else {
                out.append(contentsOf: s.properties.lowercaseMapping.unicodeScalars)
            }
        }
        return String(out)
    }
}
