import KilnBackends
import KilnCore

/// What `kiln inspect` reports about model files: sizes, dtypes, and tensors missing, misshapen or unexpected.
public struct ModelInspection {
    /// A problem with one tensor.
    public struct Finding: Equatable, CustomStringConvertible {
        public var name: String
        public var problem: String
        public var description: String { "\(name): \(problem)" }
    }

    /// Size and storage of one checkpoint.
    public struct Part {
        public var name: String
        public var parameters = 0
        public var dtypes: [String: Int] = [:]
    }

    public var parts: [Part] = []
    public var missing: [Finding] = []
    public var unexpected: [String] = []

    /// Inspects the transformer and VAE of `files`.
    public init(_ files: ModelFiles) {
        let transformer = files.transformer
        var used = Set<String>()
        for (name, shape) in FluxWeightNames.expected(files.transformerConfig) {
            let fileNames = transformer.fileNames(for: name)
            used.formUnion(fileNames)
            if let found = transformer.shape(name) {
                if found != shape { missing.append(Finding(name: name, problem: "shape \(found), expected \(shape)")) }
            } else {
                let absent = fileNames.filter { !transformer.checkpoint.contains($0) }
                missing.append(Finding(name: absent.first ?? name, problem: "missing"))
            }
        }
        count("transformer", transformer.checkpoint)
        unexpected += transformer.checkpoint.names.filter { !used.contains($0) }

        // The VAE's expected names come from loading it against a source that records requests.
        let recorder = RecordingWeights()
        let backend = CPUBackend()
        _ = try? VAEDecoder(config: files.vaeConfig, loader: WeightLoader(backend: backend, source: recorder, prefix: "decoder."))
        _ = try? VAEEncoder(config: files.vaeConfig, loader: WeightLoader(backend: backend, source: recorder, prefix: "encoder."))
        var vaeUsed = Set<String>()
        for (name, shape) in recorder.requests {
            let fileName = files.vae.fileName(for: name)
            vaeUsed.insert(fileName)
            if let info = files.vae.checkpoint.info(fileName) {
                if info.shape != shape && info.shape != shape + [1, 1] {
                    missing.append(Finding(name: fileName, problem: "shape \(info.shape), expected \(shape)"))
                }
            } else {
                missing.append(Finding(name: fileName, problem: "missing"))
            }
        }
        count("vae", files.vae.checkpoint)
        unexpected += files.vae.checkpoint.names.filter { !vaeUsed.contains($0) }
    }

    mutating func count(_ part: String, _ checkpoint: Checkpoint) {
        var summary = Part(name: part)
        for name in checkpoint.names {
            guard let info = checkpoint.info(name) else { continue }
            summary.parameters += info.count
            summary.dtypes[info.dtype.rawValue, default: 0] += 1
        }
        parts.append(summary)
    }
}

/// A weight source that remembers what was asked for and answers with zeros of the asked shape.
final class RecordingWeights: WeightSource {
    var requests: [(name: String, shape: [Int])] = []
    var origin: String { "recording" }

    func tensor(_ name: String, shape: [Int]) throws -> HostTensor {
        requests.append((name, shape))
        return HostTensor(shape: shape)
    }
}
