import KilnBackends
import KilnCore

/// The FLUX transformer's tensors by canonical (BFL) name, and the mapping from the diffusers layout.
public enum FluxWeightNames {
    /// Every tensor the transformer reads, with its shape, in load order.
    public static func expected(_ config: FluxConfig) -> [(name: String, shape: [Int])] {
        let h = config.hidden
        var list: [(String, [Int])] = []
        func linear(_ name: String, _ inputs: Int, _ outputs: Int) {
            list.append(("\(name).weight", [outputs, inputs]))
            list.append(("\(name).bias", [outputs]))
        }
        linear("img_in", config.inChannels, h)
        linear("txt_in", config.jointDim, h)
        linear("time_in.in_layer", 256, h)
        linear("time_in.out_layer", h, h)
        linear("vector_in.in_layer", config.pooledDim, h)
        linear("vector_in.out_layer", h, h)
        if config.guidanceEmbed {
            linear("guidance_in.in_layer", 256, h)
            linear("guidance_in.out_layer", h, h)
        }
        for i in 0..<config.doubleBlocks {
            for stream in ["img", "txt"] {
                let p = "double_blocks.\(i).\(stream)"
                linear("\(p)_mod.lin", h, 6 * h)
                linear("\(p)_attn.qkv", h, 3 * h)
                list.append(("\(p)_attn.norm.query_norm.scale", [config.headDim]))
                list.append(("\(p)_attn.norm.key_norm.scale", [config.headDim]))
                linear("\(p)_attn.proj", h, h)
                linear("\(p)_mlp.0", h, config.mlpHidden)
                linear("\(p)_mlp.2", config.mlpHidden, h)
            }
        }
        for i in 0..<config.singleBlocks {
            let p = "single_blocks.\(i)"
            linear("\(p).modulation.lin", h, 3 * h)
            linear("\(p).linear1", h, 3 * h + config.mlpHidden)
            linear("\(p).linear2", h + config.mlpHidden, h)
            list.append(("\(p).norm.query_norm.scale", [config.headDim]))
            list.append(("\(p).norm.key_norm.scale", [config.headDim]))
        }
        linear("final_layer.adaLN_modulation.1", h, 2 * h)
        linear("final_layer.linear", h, config.inChannels)
        return list
    }

    /// How a canonical tensor is assembled from diffusers tensors: concatenated along dim 0, optionally with the two
    /// halves swapped (diffusers' final norm stores (scale, shift); BFL stores (shift, scale)).
    public struct DiffusersSource: Equatable {
        public var parts: [String]
        public var swapHalves = false
    }

    /// The diffusers tensors behind canonical tensor `name`, or nil for a name outside the FLUX layout.
    public static func diffusersSource(of name: String) -> DiffusersSource? {
        guard let dot = name.lastIndex(of: ".") else { return nil }
        let module = String(name[..<dot])
        var parameter = String(name[name.index(after: dot)...])
        if parameter == "scale" { parameter = "weight" }
        func from(_ modules: [String], swap: Bool = false) -> DiffusersSource {
            DiffusersSource(parts: modules.map { "\($0).\(parameter)" }, swapHalves: swap)
        }
        let fixed: [String: String] = [
            "img_in": "x_embedder", "txt_in": "context_embedder",
            "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
            "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
            "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
            "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
            "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
            "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
            "final_layer.linear": "proj_out",
        ]
        if let target = fixed[module] { return from([target]) }
        if module == "final_layer.adaLN_modulation.1" { return from(["norm_out.linear"], swap: true) }

        let pieces = module.split(separator: ".", maxSplits: 2).map(String.init)
        guard pieces.count == 3, let index = Int(pieces[1]) else { return nil }
        let rest = pieces[2]
        if pieces[0] == "double_blocks" {
            let p = "transformer_blocks.\(index)"
            let table: [String: [String]] = [
                "img_mod.lin": ["\(p).norm1.linear"],
                "txt_mod.lin": ["\(p).norm1_context.linear"],
                "img_attn.qkv": ["\(p).attn.to_q", "\(p).attn.to_k", "\(p).attn.to_v"],
                "txt_attn.qkv": ["\(p).attn.add_q_proj", "\(p).attn.add_k_proj", "\(p).attn.add_v_proj"],
                "img_attn.norm.query_norm": ["\(p).attn.norm_q"],
                "img_attn.norm.key_norm": ["\(p).attn.norm_k"],
                "txt_attn.norm.query_norm": ["\(p).attn.norm_added_q"],
                "txt_attn.norm.key_norm": ["\(p).attn.norm_added_k"],
                "img_attn.proj": ["\(p).attn.to_out.0"],
                "txt_attn.proj": ["\(p).attn.to_add_out"],
                "img_mlp.0": ["\(p).ff.net.0.proj"],
                "img_mlp.2": ["\(p).ff.net.2"],
                "txt_mlp.0": ["\(p).ff_context.net.0.proj"],
                "txt_mlp.2": ["\(p).ff_context.net.2"],
            ]
            return table[rest].map { from($0) }
        }
        if pieces[0] == "single_blocks" {
            let p = "single_transformer_blocks.\(index)"
            let table: [String: [String]] = [
                "modulation.lin": ["\(p).norm.linear"],
                "linear1": ["\(p).attn.to_q", "\(p).attn.to_k", "\(p).attn.to_v", "\(p).proj_mlp"],
                "linear2": ["\(p).proj_out"],
                "norm.query_norm": ["\(p).attn.norm_q"],
                "norm.key_norm": ["\(p).attn.norm_k"],
            ]
            return table[rest].map { from($0) }
        }
        return nil
    }
}

/// A FLUX transformer checkpoint seen through canonical (BFL) names, whichever layout the file uses.
public struct FluxCheckpointWeights: WeightSource {
    public enum Layout: String, Sendable {
        case diffusers
        case bfl
    }

    public let checkpoint: Checkpoint
    public let layout: Layout

    public init(checkpoint: Checkpoint, layout: Layout) {
        self.checkpoint = checkpoint
        self.layout = layout
    }

    public var origin: String { checkpoint.path }

    /// The layout of a checkpoint, told by its key names.
    public static func detectLayout(_ checkpoint: Checkpoint) -> Layout? {
        if checkpoint.contains("x_embedder.weight") { return .diffusers }
        if checkpoint.contains("img_in.weight") { return .bfl }
        return nil
    }

    /// The file tensors a canonical name is built from.
    public func fileNames(for name: String) -> [String] {
        switch layout {
        case .bfl: return [name]
        case .diffusers: return FluxWeightNames.diffusersSource(of: name)?.parts ?? []
        }
    }

    /// The shape of a canonical tensor, or nil if the checkpoint lacks any part of it.
    public func shape(_ name: String) -> [Int]? {
        let infos = fileNames(for: name).map { checkpoint.info($0) }
        guard !infos.isEmpty, infos.allSatisfy({ $0 != nil }) else { return nil }
        let shapes = infos.map { $0!.shape }
        // Scalars cannot be concatenated; report them as they are (the caller sees a wrong shape).
        guard shapes.allSatisfy({ !$0.isEmpty }) else { return shapes.count == 1 ? shapes[0] : [] }
        guard var shape = shapes.first, shapes.allSatisfy({ $0.dropFirst() == shape.dropFirst() }) else { return nil }
        shape[0] = shapes.reduce(0) { $0 + $1[0] }
        return shape
    }

    public func tensor(_ name: String, shape: [Int]) throws -> HostTensor {
        try checked(try tensor(name), name, shape)
    }

    /// Hands the stored parts of `name` to the backend as they are (no host decoding), checked as `tensor` checks them.
    public func load<B: Backend>(_ name: String, shape: [Int], role: WeightRole, backend: B) throws -> B.Tensor {
        var parts: [StoredTensor]
        switch layout {
        case .bfl:
            parts = [try checkpoint.stored(name)]
        case .diffusers:
            guard let source = FluxWeightNames.diffusersSource(of: name) else {
                throw KilnError.missingTensor(name: name, file: checkpoint.path)
            }
            parts = try source.parts.map { try checkpoint.stored($0) }
            if let scalar = zip(parts, source.parts).first(where: { $0.0.shape.isEmpty }) {
                throw KilnError.corruptFile(path: checkpoint.path, reason: "tensor '\(scalar.1)' is a scalar")
            }
            let tail = Array(parts[0].shape.dropFirst())
            for (part, file) in zip(parts, source.parts) where Array(part.shape.dropFirst()) != tail {
                throw KilnError.wrongShape(name: file, expected: [part.shape[0]] + tail, found: part.shape)
            }
            if source.swapHalves {
                guard parts.count == 1, parts[0].shape[0] % 2 == 0 else { return backend.weight(try tensor(name, shape: shape), role: role) }
                let half = parts[0].shape[0] / 2
                parts = [parts[0].rows(half..<(2 * half)), parts[0].rows(0..<half)]
            }
        }
        let found = parts.joinedShape
        guard found == shape else { throw KilnError.wrongShape(name: name, expected: shape, found: found) }
        return backend.weight(rows: parts, role: role)
    }

    /// Canonical tensor `name` in whatever shape the file has.
    public func tensor(_ name: String) throws -> HostTensor {
        switch layout {
        case .bfl:
            return try checkpoint.tensor(name)
        case .diffusers:
            guard let source = FluxWeightNames.diffusersSource(of: name) else {
                throw KilnError.missingTensor(name: name, file: checkpoint.path)
            }
            let parts = try source.parts.map { try checkpoint.tensor($0) }
            if let scalar = zip(parts, source.parts).first(where: { $0.0.shape.isEmpty }) {
                throw KilnError.corruptFile(path: checkpoint.path, reason: "tensor '\(scalar.1)' is a scalar")
            }
            let tail = Array(parts[0].shape.dropFirst())
            for (part, file) in zip(parts, source.parts) where Array(part.shape.dropFirst()) != tail {
                throw KilnError.wrongShape(name: file, expected: [part.shape[0]] + tail, found: part.shape)
            }
            var data = parts.flatMap(\.data)
            if source.swapHalves {
                let half = data.count / 2
                data = Array(data[half...] + data[..<half])
            }
            return HostTensor(shape: [parts.reduce(0) { $0 + $1.shape[0] }] + tail, data: data)
        }
    }
}
