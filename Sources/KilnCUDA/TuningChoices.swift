import KilnCore

/// Autotuning choices on disk, one JSON file per GPU and library version, read at start and rewritten when a choice is
/// added: `{"gpu": ..., "<library>": <version>, "<field>": {"<shape>": "<choice>", ...}}`. A file of another GPU or
/// library version is ignored (its choices may not even exist there).
public class TuningChoices: @unchecked Sendable {
    public let path: String
    public let gpu: String
    let library: String
    let version: Int
    let field: String
    private var entries: [String: String] = [:]

    init(path: String, gpu: String, library: String, version: Int, field: String) {
        (self.path, self.gpu, self.library, self.version, self.field) = (path, gpu, library, version, field)
        guard let json = try? FileIO.readJSON(path), json["gpu"]?.string == gpu, json[library]?.int == version,
              let choices = json[field]?.object else { return }
        for (key, value) in choices { if let text = value.string { entries[key] = text } }
    }

    /// `<cache>/<folder>/<gpu tag>-<library><version>.json`.
    static func defaultPath(folder: String, gpuTag: String, library: String, version: Int) -> String {
        FileIO.join(CacheDirectory.root(), "\(folder)/\(gpuTag)-\(library)\(version).json")
    }

    subscript(shape: String) -> String? {
        get { entries[shape] }
        set { entries[shape] = newValue }
    }

    public func save() throws {
        let json = JSON.object([("gpu", .string(gpu)), (library, .number(Double(version))),
                                (field, .object(entries.keys.sorted().map { ($0, .string(entries[$0]!)) }))])
        try CacheDirectory.makeDirectories(FileIO.directory(of: path))
        try FileIO.write(Array(json.serialized.utf8), to: path)
    }
}
