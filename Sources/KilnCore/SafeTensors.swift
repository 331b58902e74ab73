/// Where one tensor lives in a safetensors file.
public struct TensorInfo: Equatable, Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Byte range relative to the start of the data section.
    public let byteRange: Range<Int>

    public var count: Int { shape.reduce(1, *) }
}

/// A read-only, memory-mapped safetensors file whose header has been fully validated:
/// known dtypes, shape × element size equal to the byte length, ranges inside the file and not overlapping.
public final class SafeTensorsFile: @unchecked Sendable {
    /// Headers larger than this are refused as corrupt (real FLUX headers are well under 1 MB).
    public static let maximumHeaderLength = 100_000_000

    public let path: String
    public let metadata: [String: String]
    /// Tensor names in header order.
    public let names: [String]
    let infos: [String: TensorInfo]
    let file: MappedFile
    let dataStart: Int

    /// Opens and validates `path`. Throws `KilnError` naming the file and the problem.
    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        let bytes = file.bytes
        func corrupt(_ reason: String) -> KilnError { .corruptFile(path: path, reason: reason) }

        guard bytes.count >= 8 else { throw corrupt("file is \(bytes.count) bytes, too short for a safetensors header") }
        var headerLength: UInt64 = 0
        for i in 0..<8 { headerLength |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard headerLength >= 2, headerLength <= UInt64(SafeTensorsFile.maximumHeaderLength) else {
            throw corrupt("header length \(headerLength) is not plausible")
        }
        guard headerLength <= UInt64(bytes.count - 8) else {
            throw corrupt("header length \(headerLength) runs past the end of the file (\(bytes.count) bytes); truncated?")
        }
        dataStart = 8 + Int(headerLength)
        let dataLength = bytes.count - dataStart

        let header: JSON
        do {
            header = try JSON.parse(UnsafeRawBufferPointer(rebasing: bytes[8..<dataStart]))
        } catch let error as JSONError {
            throw corrupt("header is not valid JSON (\(error.description))")
        }
        guard let members = header.object else { throw corrupt("header is not a JSON object") }

        var metadata: [String: String] = [:]
        var names: [String] = []
        var infos: [String: TensorInfo] = [:]
        for (name, entry) in members {
            if name == "__metadata__" {
                guard let pairs = entry.object else { throw corrupt("__metadata__ is not an object") }
                for (key, value) in pairs {
                    guard let text = value.string else { throw corrupt("__metadata__ value for '\(key)' is not a string") }
                    metadata[key] = text
                }
                continue
            }
            guard infos[name] == nil else { throw corrupt("tensor '\(name)' appears twice") }
            guard let dtypeName = entry["dtype"]?.string else { throw corrupt("tensor '\(name)' has no dtype") }
            guard let dtype = DType(rawValue: dtypeName) else {
                throw corrupt("tensor '\(name)' has unsupported dtype \(dtypeName) (Kiln reads F32, F16, BF16, F8_E4M3)")
            }
            guard let shapeValues = entry["shape"]?.array else { throw corrupt("tensor '\(name)' has no shape") }
            var shape: [Int] = []
            var elements = 1
            for value in shapeValues {
                guard let dimension = value.int, dimension >= 0, dimension < 1 << 40 else {
                    throw corrupt("tensor '\(name)' has an invalid dimension \(value.serialized)")
                }
                shape.append(dimension)
                let (product, overflow) = elements.multipliedReportingOverflow(by: dimension)
                guard !overflow, product < 1 << 48 else { throw corrupt("tensor '\(name)' shape \(shape) is absurdly large") }
                elements = product
            }
            guard let offsets = entry["data_offsets"]?.array, offsets.count == 2,
                  let begin = offsets[0].int, let end = offsets[1].int else {
                throw corrupt("tensor '\(name)' has no valid data_offsets")
            }
            guard begin >= 0, begin <= end else { throw corrupt("tensor '\(name)' has inverted data_offsets [\(begin), \(end)]") }
            guard end <= dataLength else {
                throw corrupt("tensor '\(name)' data [\(begin), \(end)) lies past the end of the data (\(dataLength) bytes); truncated?")
            }
            guard end - begin == elements * dtype.size else {
                throw corrupt("tensor '\(name)' is \(end - begin) bytes but shape \(shape) of \(dtypeName) needs \(elements * dtype.size)")
            }
            names.append(name)
            infos[name] = TensorInfo(name: name, dtype: dtype, shape: shape, byteRange: begin..<end)
        }
        let ordered = infos.values.filter { !$0.byteRange.isEmpty }.sorted { $0.byteRange.lowerBound < $1.byteRange.lowerBound }
        for (a, b) in zip(ordered, ordered.dropFirst()) where a.byteRange.upperBound > b.byteRange.lowerBound {
            throw corrupt("tensors '\(a.name)' and '\(b.name)' overlap in the file")
        }
        self.metadata = metadata
        self.names = names
        self.infos = infos
    }

    /// The description of tensor `name`, or nil if the file has no such tensor.
    public func info(_ name: String) -> TensorInfo? { infos[name] }

    /// The raw stored bytes of a tensor (little-endian, in its file dtype).
    public func bytes(_ info: TensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: file.bytes[(dataStart + info.byteRange.lowerBound)..<(dataStart + info.byteRange.upperBound)])
    }

    /// Tensor `name` converted to fp32. Throws `KilnError.missingTensor` if absent.
    public func tensor(_ name: String) throws -> HostTensor {
        try stored(name).decoded()
    }

    /// Tensor `name` as stored (file dtype, bytes in the mapping). Throws `KilnError.missingTensor` if absent.
    public func stored(_ name: String) throws -> StoredTensor {
        guard let info = infos[name] else { throw KilnError.missingTensor(name: name, file: path) }
        return StoredTensor(dtype: info.dtype, shape: info.shape, bytes: bytes(info))
    }

    /// Converts little-endian stored values of `dtype` to fp32.
    public static func decode(_ raw: UnsafeRawBufferPointer, dtype: DType) -> [Float] {
        let count = raw.count / dtype.size
        return [Float](unsafeUninitializedCapacity: count) { out, initialized in
            switch dtype {
            case .f32:
                for i in 0..<count { out[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
            case .f16:
                for i in 0..<count { out[i] = NumberFormats.f16ToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
            case .bf16:
                for i in 0..<count { out[i] = NumberFormats.bf16ToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
            case .f8e4m3:
                for i in 0..<count { out[i] = NumberFormats.e4m3ToFloat(raw[i]) }
            }
            initialized = count
        }
    }
}

/// A tensor's stored bytes in its file dtype: a view into a memory-mapped file, valid while the file is open. Lets a
/// backend move weights to the device as they are stored, without decoding them on the host first.
public struct StoredTensor: @unchecked Sendable {
    public let dtype: DType
    public let shape: [Int]
    public let bytes: UnsafeRawBufferPointer

    public init(dtype: DType, shape: [Int], bytes: UnsafeRawBufferPointer) {
        (self.dtype, self.shape, self.bytes) = (dtype, shape, bytes)
    }

    /// The values as fp32.
    public func decoded() -> HostTensor {
        HostTensor(shape: shape, data: SafeTensorsFile.decode(bytes, dtype: dtype))
    }

    /// Rows `range` of the first dimension (elements of a vector), still as stored.
    public func rows(_ range: Range<Int>) -> StoredTensor {
        let rowBytes = bytes.count / max(1, shape.first ?? 1)
        return StoredTensor(dtype: dtype, shape: [range.count] + shape.dropFirst(),
                            bytes: UnsafeRawBufferPointer(rebasing: bytes[(range.lowerBound * rowBytes)..<(range.upperBound * rowBytes)]))
    }
}

extension Array where Element == StoredTensor {
    /// The shape of these tensors joined along their first dimension (a single tensor: its own shape).
    public var joinedShape: [Int] {
        count == 1 ? self[0].shape : [reduce(0) { $0 + ($1.shape.first ?? 1) }] + (first?.shape.dropFirst() ?? [])
    }

    /// The joined tensor decoded to fp32 on the host.
    public func decodedJoined() -> HostTensor {
        HostTensor(shape: joinedShape, data: flatMap { $0.decoded().data })
    }
}

/// Writes safetensors files.
public enum SafeTensorsWriter {
    /// One tensor to write: its fp32 values and the dtype to store them in.
    public struct Entry {
        public var name: String
        public var tensor: HostTensor
        public var dtype: DType
        public init(_ name: String, _ tensor: HostTensor, as dtype: DType = .f32) {
            self.name = name
            self.tensor = tensor
            self.dtype = dtype
        }
    }

    /// The bytes of a safetensors file holding `entries` (in order) and `metadata`.
    public static func encode(_ entries: [Entry], metadata: [String: String] = [:]) -> [UInt8] {
        var members: [(String, JSON)] = []
        if !metadata.isEmpty {
            members.append(("__metadata__", .object(metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })))
        }
        var data: [UInt8] = []
        for entry in entries {
            let begin = data.count
            for value in entry.tensor.data {
                switch entry.dtype {
                case .f32: appendLittleEndian(value.bitPattern, to: &data)
                case .f16: appendLittleEndian(NumberFormats.floatToF16(value), to: &data)
                case .bf16: appendLittleEndian(NumberFormats.floatToBF16(value), to: &data)
                case .f8e4m3: data.append(NumberFormats.floatToE4M3(value))
                }
            }
            members.append((entry.name, .object([
                ("dtype", .string(entry.dtype.rawValue)),
                ("shape", .array(entry.tensor.shape.map { .number(Double($0)) })),
                ("data_offsets", .array([.number(Double(begin)), .number(Double(data.count))])),
            ])))
        }
        var header = Array(JSON.object(members).serialized.utf8)
        // The format pads the header with spaces so the data starts 8-byte aligned.
        while header.count % 8 != 0 { header.append(0x20) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 + header.count + data.count)
        appendLittleEndian(UInt64(header.count), to: &bytes)
        bytes += header
        bytes += data
        return bytes
    }

    /// Writes `entries` to `path`.
    public static func write(_ entries: [Entry], metadata: [String: String] = [:], to path: String) throws {
        try FileIO.write(encode(entries, metadata: metadata), to: path)
    }

    static func appendLittleEndian<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }
}
