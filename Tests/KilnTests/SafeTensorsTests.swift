import KilnCore
import XCTest

final class SafeTensorsTests: XCTestCase {
    var directory = ""

    override func setUp() { directory = Fixtures.temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    func write(_ bytes: [UInt8], _ name: String = "t.safetensors") -> String {
        let path = directory + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    /// A file with one F32 tensor `x` of shape [2, 3] and a hand-written header.
    func rawFile(header: String, dataBytes: Int = 24) -> [UInt8] {
        var bytes: [UInt8] = []
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { bytes += $0 }
        bytes += Array(header.utf8)
        bytes += [UInt8](repeating: 0x3F, count: dataBytes)
        return bytes
    }

    func assertCorrupt(_ bytes: [UInt8], mentions fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        let path = write(bytes)
        XCTAssertThrowsError(try SafeTensorsFile(path: path), file: file, line: line) { error in
            guard case let KilnError.corruptFile(errorPath, reason) = error else {
                return XCTFail("expected corruptFile, got \(error)", file: file, line: line)
            }
            XCTAssertEqual(errorPath, path, file: file, line: line)
            XCTAssertTrue(reason.contains(fragment), "'\(reason)' should mention '\(fragment)'", file: file, line: line)
        }
    }

    func testRoundTripEveryDType() throws {
        var noise = NoiseGenerator(seed: 1)
        let values = HostTensor(shape: [3, 5], data: noise.normal(15))
        let entries: [SafeTensorsWriter.Entry] = [
            .init("f32", values, as: .f32), .init("f16", values, as: .f16),
            .init("bf16", values, as: .bf16), .init("f8", values, as: .f8e4m3),
        ]
        let path = directory + "/all.safetensors"
        try SafeTensorsWriter.write(entries, metadata: ["format": "pt"], to: path)
        let file = try SafeTensorsFile(path: path)
        XCTAssertEqual(file.names, ["f32", "f16", "bf16", "f8"])
        XCTAssertEqual(file.metadata, ["format": "pt"])
        XCTAssertEqual(try file.tensor("f32"), values)
        XCTAssertLessThan(try file.tensor("f16").relativeError(to: values), 1e-3)
        XCTAssertLessThan(try file.tensor("bf16").relativeError(to: values), 5e-3)
        XCTAssertLessThan(try file.tensor("f8").relativeError(to: values), 6e-2)
        XCTAssertEqual(file.info("bf16")?.dtype, .bf16)
        XCTAssertEqual(file.info("bf16")?.shape, [3, 5])
        // Stored views: the file's bytes, rows of them decoding to the rows of the decoded tensor.
        for name in ["f32", "f16", "bf16", "f8"] {
            let stored = try file.stored(name)
            XCTAssertEqual(stored.shape, [3, 5])
            XCTAssertEqual(stored.decoded(), try file.tensor(name))
            XCTAssertEqual(stored.rows(1..<3).decoded().data, Array(try file.tensor(name).data[5..<15]), name)
        }
    }

    func testMissingTensorNamesTheFile() throws {
        let path = directory + "/one.safetensors"
        try SafeTensorsWriter.write([.init("a", HostTensor(shape: [1], data: [1]))], to: path)
        XCTAssertThrowsError(try SafeTensorsFile(path: path).tensor("b")) { error in
            XCTAssertEqual(error as? KilnError, .missingTensor(name: "b", file: path))
        }
    }

    func testUnreadablePath() {
        XCTAssertThrowsError(try SafeTensorsFile(path: directory + "/absent.safetensors")) { error in
            guard case KilnError.unreadable = error else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try SafeTensorsFile(path: directory)) { error in
            guard case KilnError.unreadable = error else { return XCTFail("\(error)") }
        }
    }

    func testTruncatedFile() throws {
        let path = directory + "/full.safetensors"
        try SafeTensorsWriter.write([.init("a", HostTensor(shape: [4, 4], repeating: 1))], to: path)
        let bytes = try FileIO.read(path)
        assertCorrupt(Array(bytes.prefix(bytes.count - 5)), mentions: "truncated")
        assertCorrupt(Array(bytes.prefix(20)), mentions: "header length")
        assertCorrupt(Array(bytes.prefix(4)), mentions: "too short")
    }

    func testCorruptHeaders() {
        let good = #"{"x":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#
        XCTAssertNoThrow(try SafeTensorsFile(path: write(rawFile(header: good))))
        assertCorrupt(rawFile(header: #"{"x":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]"#), mentions: "not valid JSON")
        assertCorrupt(rawFile(header: #"{"x":{"dtype":"F32","shape":[2,3],"data_offsets":[0,48]}}"#), mentions: "past the end")
        assertCorrupt(rawFile(header: #"{"x":{"dtype":"F32","shape":[2,2],"data_offsets":[0,24]}}"#), mentions: "needs 16")
        assertCorrupt(rawFile(header: #"{"x":{"dtype":"I64","shape":[3],"data_offsets":[0,24]}}"#), mentions: "unsupported dtype I64")
        assertCorrupt(rawFile(header: #"{"x":{"dtype":"F32","shape":[-2,3],"data_offsets":[0,24]}}"#), mentions: "invalid dimension")
        assertCorrupt(rawFile(header: #"{"x":{"dtype":"F32","shape":[2,3],"data_offsets":[24,0]}}"#), mentions: "inverted")
        assertCorrupt(rawFile(header: #"{"x":{"dtype":"F32","shape":[2,3]}}"#), mentions: "data_offsets")
        assertCorrupt(rawFile(header: #"[1,2]"#), mentions: "not a JSON object")
        assertCorrupt(rawFile(header: #"{"x":{"dtype":"F32","shape":[1000000000,1000000000,1000000],"data_offsets":[0,24]}}"#),
                      mentions: "absurdly large")
        let overlapping = #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#
        assertCorrupt(rawFile(header: overlapping), mentions: "overlap")
        var absurd: [UInt8] = []
        withUnsafeBytes(of: UInt64(1) << 40) { absurd += $0 }
        absurd += [UInt8](repeating: 0x20, count: 64)
        assertCorrupt(absurd, mentions: "not plausible")
    }

    func testShardedCheckpoint() throws {
        try SafeTensorsWriter.write([.init("a", HostTensor(shape: [2], data: [1, 2]))], to: directory + "/m-1.safetensors")
        try SafeTensorsWriter.write([.init("b", HostTensor(shape: [1], data: [3]))], to: directory + "/m-2.safetensors")
        let index = #"{"metadata":{},"weight_map":{"a":"m-1.safetensors","b":"m-2.safetensors"}}"#
        FileManager.default.createFile(atPath: directory + "/m.safetensors.index.json", contents: Data(index.utf8))
        let checkpoint = try Checkpoint(path: directory)
        XCTAssertEqual(Set(checkpoint.names), ["a", "b"])
        XCTAssertEqual(try checkpoint.tensor("b").data, [3])
        XCTAssertThrowsError(try checkpoint.tensor("a", shape: [3])) { error in
            XCTAssertEqual(error as? KilnError, .wrongShape(name: "a", expected: [3], found: [2]))
        }
        let lying = #"{"weight_map":{"a":"m-1.safetensors","c":"m-2.safetensors"}}"#
        FileManager.default.createFile(atPath: directory + "/m.safetensors.index.json", contents: Data(lying.utf8))
        XCTAssertThrowsError(try Checkpoint(path: directory + "/m.safetensors.index.json")) { error in
            guard case let KilnError.missingTensor(name, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(name, "c")
        }
    }
}
