/// A set of named tensors, from one safetensors file or from the shards of an indexed checkpoint.
public final class Checkpoint: @unchecked Sendable {
    /// What to show in messages: the file, or the index file for a sharded checkpoint.
    public let path: String
    let files: [SafeTensorsFile]
    let location: [String: Int]
    /// All tensor names, in file order.
    public let names: [String]

    /// Opens a `.safetensors` file, a `*.safetensors.index.json`, or a folder holding exactly one of either.
    public init(path: String) throws {
        var resolved = path
        if FileIO.isDirectory(path) {
            let entries = try FileIO.list(path)
            let indexes = entries.filter { $0.hasSuffix(".safetensors.index.json") }
            let singles = entries.filter { $0.hasSuffix(".safetensors") }
            if indexes.count == 1 {
                resolved = FileIO.join(path, indexes[0])
            } else if indexes.isEmpty && singles.count == 1 {
                resolved = FileIO.join(path, singles[0])
            } else {
                throw KilnError.unreadable(path: path, reason: "expected one .safetensors file or one .safetensors.index.json, found \(singles.count + indexes.count)")
            }
        }
        self.path = resolved
        if resolved.hasSuffix(".json") {
            let index = try FileIO.readJSON(resolved)
            guard let map = index["weight_map"]?.object else {
                throw KilnError.corruptFile(path: resolved, reason: "no weight_map object")
            }
            var shardNames: [String] = []
            var shardOf: [String: Int] = [:]
            for (_, value) in map {
                guard let shard = value.string, !shard.contains("/") else {
                    throw KilnError.corruptFile(path: resolved, reason: "weight_map entry \(value.serialized) is not a file name")
                }
                if shardOf[shard] == nil {
                    shardOf[shard] = shardNames.count
                    shardNames.append(shard)
                }
            }
            let folder = FileIO.directory(of: resolved)
            files = try shardNames.map { try SafeTensorsFile(path: FileIO.join(folder, $0)) }
            var location: [String: Int] = [:]
            var names: [String] = []
            for (name, value) in map {
                let shard = shardOf[value.string!]!
                guard files[shard].info(name) != nil else {
                    throw KilnError.missingTensor(name: name, file: files[shard].path + " (listed in \(resolved))")
                }
                location[name] = shard
                names.append(name)
            }
            self.location = location
            self.names = names
        } else {
            let file = try SafeTensorsFile(path: resolved)
            files = [file]
            location = Dictionary(uniqueKeysWithValues: file.names.map { ($0, 0) })
            names = file.names
        }
    }

    /// Metadata of the first file.
    public var metadata: [String: String] { files.first?.metadata ?? [:] }

    /// The description of `name`, or nil.
    public func info(_ name: String) -> TensorInfo? {
        location[name].flatMap { files[$0].info(name) }
    }

    /// True when the checkpoint holds `name`.
    public func contains(_ name: String) -> Bool { location[name] != nil }

    /// Tensor `name` as fp32. Throws `KilnError.missingTensor` naming the checkpoint.
    public func tensor(_ name: String) throws -> HostTensor {
        try stored(name).decoded()
    }

    /// Tensor `name` as stored in its file. Throws `KilnError.missingTensor` naming the checkpoint.
    public func stored(_ name: String) throws -> StoredTensor {
        guard let shard = location[name] else { throw KilnError.missingTensor(name: name, file: path) }
        return try files[shard].stored(name)
    }

    /// Tensor `name` as fp32, checked to have `shape`.
    public func tensor(_ name: String, shape: [Int]) throws -> HostTensor {
        let value = try tensor(name)
        guard value.shape == shape else { throw KilnError.wrongShape(name: name, expected: shape, found: value.shape) }
        return value
    }
}
