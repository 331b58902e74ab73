import KilnCore

/// A VAE checkpoint seen through diffusers names (the canonical ones for the VAE), whichever layout the file uses.
public struct VAEWeights: WeightSource {
    public let checkpoint: Checkpoint
    public let layout: FluxCheckpointWeights.Layout
    /// Number of decoder up blocks, needed to reverse BFL's block order.
    let blocks: Int

    public init(checkpoint: Checkpoint, layout: FluxCheckpointWeights.Layout, blocks: Int) {
        self.checkpoint = checkpoint
        self.layout = layout
        self.blocks = blocks
    }

    public var origin: String { checkpoint.path }

    /// The layout of a VAE checkpoint, told by its key names.
    public static func detectLayout(_ checkpoint: Checkpoint) -> FluxCheckpointWeights.Layout? {
        if checkpoint.contains("decoder.up_blocks.0.resnets.0.conv1.weight") { return .diffusers }
        if checkpoint.contains("decoder.up.0.block.0.conv1.weight") { return .bfl }
        return nil
    }

    /// The file name holding diffusers tensor `name`.
    public func fileName(for name: String) -> String {
        layout == .diffusers ? name : VAEWeights.bflName(of: name, blocks: blocks)
    }

    public func tensor(_ name: String, shape: [Int]) throws -> HostTensor {
        let value = try checkpoint.tensor(fileName(for: name))
        // BFL stores the attention projections as 1×1 convolutions.
        if layout == .bfl, shape.count == 2, value.shape == shape + [1, 1] { return value.reshaped(shape) }
        return try checked(value, name, shape)
    }

    /// Maps a diffusers AutoencoderKL name to the BFL `ae.safetensors` name.
    public static func bflName(of name: String, blocks: Int) -> String {
        var parts = name.split(separator: ".").map(String.init)
        func replace(_ from: [String], _ to: [String]) {
            guard let start = (0...(max(0, parts.count - from.count))).first(where: { Array(parts[$0..<min(parts.count, $0 + from.count)]) == from }),
                  parts.count >= from.count else { return }
            parts.replaceSubrange(start..<(start + from.count), with: to)
        }
        if parts.count > 2, parts[1] == "up_blocks", let i = Int(parts[2]) {
            parts[1] = "up"
            parts[2] = String(blocks - 1 - i)
        }
        replace(["down_blocks"], ["down"])
        replace(["resnets"], ["block"])
        replace(["conv_shortcut"], ["nin_shortcut"])
        replace(["downsamplers", "0"], ["downsample"])
        replace(["upsamplers", "0"], ["upsample"])
        replace(["mid_block", "block", "0"], ["mid", "block_1"])
        replace(["mid_block", "block", "1"], ["mid", "block_2"])
        replace(["mid_block", "attentions", "0"], ["mid", "attn_1"])
        replace(["group_norm"], ["norm"])
        replace(["to_q"], ["q"])
        replace(["to_k"], ["k"])
        replace(["to_v"], ["v"])
        replace(["to_out", "0"], ["proj_out"])
        replace(["conv_norm_out"], ["norm_out"])
        return parts.joined(separator: ".")
    }
}
