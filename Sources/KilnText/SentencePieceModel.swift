import KilnCore

/// The parts of a SentencePiece `ModelProto` (`spiece.model`) a unigram tokenizer needs, read with a small
/// protobuf wire-format reader (fields: 1 pieces {1 piece, 2 score, 3 type}, 2 trainer spec {3 model type,
/// 35 byte fallback}, 3 normalizer spec {1 name, 2 precompiled charsmap, 3 add dummy prefix,
/// 4 remove extra whitespaces, 5 escape whitespaces}).
public struct SentencePieceModel {
    public enum PieceType: Int, Sendable {
        case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }
    public struct Piece: Sendable {
        public var text: String
        public var score: Float
        public var type: PieceType
    }
    public var pieces: [Piece] = []
    /// 1 unigram, 2 BPE, 3 word, 4 char.
    public var modelType = 1
    public var byteFallback = false
    public var normalizerName = ""
    public var precompiledCharsmap: [UInt8] = []
    public var addDummyPrefix = true
    public var removeExtraWhitespaces = true
    public var escapeWhitespaces = true

    public init(path: String) throws {
        let bytes = try FileIO.read(path)
        do {
            try parse(bytes)
        } catch let error as ProtobufError {
            throw KilnError.corruptFile(path: path, reason: "not a SentencePiece model: \(error.reason)")
        }
    }

    init(bytes: [UInt8]) throws { try parse(bytes) }

    mutating func parse(_ bytes: [UInt8]) throws {
        var reader = ProtobufReader(bytes[...])
        while let (field, value) = try reader.next() {
            switch (field, value) {
            case let (1, .bytes(message)): pieces.append(try Self.piece(message))
            case let (2, .bytes(message)):
                var spec = ProtobufReader(message)
                while let (f, v) = try spec.next() {
                    if f == 3, case let .varint(n) = v { modelType = Int(n) }
                    if f == 35, case let .varint(n) = v { byteFallback = n != 0 }
                }
            case let (3, .bytes(message)):
                var spec = ProtobufReader(message)
                while let (f, v) = try spec.next() {
                    switch (f, v) {
                    case let (1, .bytes(s)): normalizerName = String(decoding: s, as: UTF8.self)
                    case let (2, .bytes(s)): precompiledCharsmap = Array(s)
                    case let (3, .varint(n)): addDummyPrefix = n != 0
                    case let (4, .varint(n)): removeExtraWhitespaces = n != 0
                    case let (5, .varint(n)): escapeWhitespaces = n != 0
                    default: break
                    }
                }
            default: break
            }
        }
        guard !pieces.isEmpty else { throw ProtobufError(reason: "no pieces") }
    }

    static func piece(_ message: ArraySlice<UInt8>) throws -> Piece {
        var reader = ProtobufReader(message)
        var piece = Piece(text: "", score: 0, type: .normal)
        while let (field, value) = try reader.next() {
            switch (field, value) {
            case let (1, .bytes(s)):
                guard let text = String(validating: s, as: UTF8.self) else { throw ProtobufError(reason: "a piece is not UTF-8") }
                piece.text = text
            case let (2, .fixed32(bits)): piece.score = Float(bitPattern: bits)
            case let (3, .varint(n)): piece.type = PieceType(rawValue: Int(n)) ?? .normal
            default: break
            }
        }
        return piece
    }
}

struct ProtobufError: Error {
    let reason: String
}

/// Protobuf wire format: (field number, value) pairs; nested messages are length-delimited byte ranges.
struct ProtobufReader {
    enum Value {
        case varint(UInt64)
        case fixed64(UInt64)
        case bytes(ArraySlice<UInt8>)
        case fixed32(UInt32)
    }
    let data: ArraySlice<UInt8>
    var position: Int

    init(_ data: ArraySlice<UInt8>) {
        self.data = data
        position = data.startIndex
    }

    mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard position < data.endIndex else { throw ProtobufError(reason: "truncated varint") }
            let byte = data[position]
            position += 1
            guard shift < 64 else { throw ProtobufError(reason: "varint too long") }
            result |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
        }
    }

    mutating func fixed(_ count: Int) throws -> UInt64 {
        guard data.endIndex - position >= count else { throw ProtobufError(reason: "truncated fixed-width field") }
        var value: UInt64 = 0
        for i in 0..<count { value |= UInt64(data[position + i]) << (8 * UInt64(i)) }
        position += count
        return value
    }

    mutating func next() throws -> (Int, Value)? {
        guard position < data.endIndex else { return nil }
        let key = try varint()
        let field = Int(key >> 3)
        switch key & 7 {
        case 0: return (field, .varint(try varint()))
        case 1: return (field, .fixed64(try fixed(8)))
        case 2:
            let length = try varint()
            guard length <= UInt64(data.endIndex - position) else { throw ProtobufError(reason: "field \(field) runs past the end") }
            let start = position
            position += Int(length)
            return (field, .bytes(data[start..<position]))
        case 5: return (field, .fixed32(UInt32(try fixed(4))))
        default: throw ProtobufError(reason: "unsupported wire type \(key & 7) for field \(field)")
        }
    }
}
