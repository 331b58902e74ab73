import KilnCore

/// The shape of FLUX's AutoencoderKL: 16 latent channels, no quant convs, latents scaled by 0.3611 after a
/// shift of 0.1159. The real model: block channels (128, 256, 512, 512), 2 layers per block, 32 groups.
public struct AutoencoderConfig: Equatable, Sendable {
    public var blockChannels = [128, 256, 512, 512]
    public var layersPerBlock = 2
    public var latentChannels = 16
    public var groups = 32
    public var imageChannels = 3
    public var scalingFactor: Float = 0.3611
    public var shiftFactor: Float = 0.1159

    public init() {}

    /// Spatial factor between image and latent (8 for four blocks).
    public var downsampling: Int { 1 << (blockChannels.count - 1) }

    /// Reads a diffusers `vae/config.json`.
    public init(diffusersConfig json: JSON, path: String) throws {
        func int(_ key: String, _ fallback: Int) throws -> Int { try json.positiveInt(key, default: fallback, in: path) }
        if let channels = json["block_out_channels"]?.array {
            blockChannels = try channels.map {
                guard let n = $0.int, n > 0 else { throw KilnError.corruptFile(path: path, reason: "bad block_out_channels") }
                return n
            }
        }
        layersPerBlock = try int("layers_per_block", 2)
        latentChannels = try int("latent_channels", 16)
        groups = try int("norm_num_groups", 32)
        imageChannels = try int("in_channels", 3)
        if let value = json["scaling_factor"]?.number { scalingFactor = Float(value) }
        if let value = json["shift_factor"]?.number { shiftFactor = Float(value) }
        if json["use_quant_conv"]?.bool == true || json["use_post_quant_conv"]?.bool == true {
            throw KilnError.unsupported("\(path): quant convs are not used by FLUX's VAE and not supported")
        }
        try validate(path: path)
    }

    /// Derives the config from a BFL `ae.safetensors` (which carries no config): channels and depth from tensor
    /// shapes; 32 groups and FLUX's scaling and shift are constants of that format.
    public init(bflShapes shape: (String) -> [Int]?, path: String) throws {
        var channels: [Int] = []
        while let s = shape("encoder.down.\(channels.count).block.0.conv1.weight") {
            guard s.count == 4, s[0] > 0 else {
                throw KilnError.corruptFile(path: path, reason: "encoder.down.\(channels.count).block.0.conv1.weight has shape \(s), expected a 4-D kernel")
            }
            channels.append(s[0])
        }
        guard !channels.isEmpty else { throw KilnError.missingTensor(name: "encoder.down.0.block.0.conv1.weight", file: path) }
        blockChannels = channels
        var layers = 0
        while shape("encoder.down.0.block.\(layers).conv1.weight") != nil { layers += 1 }
        layersPerBlock = layers
        guard let convIn = shape("decoder.conv_in.weight"), convIn.count == 4 else {
            throw KilnError.missingTensor(name: "decoder.conv_in.weight", file: path)
        }
        latentChannels = convIn[1]
        try validate(path: path)
    }

    func validate(path: String) throws {
        guard !blockChannels.isEmpty else { throw KilnError.corruptFile(path: path, reason: "no block channels") }
        guard scalingFactor.isFinite, scalingFactor != 0, shiftFactor.isFinite else {
            throw KilnError.corruptFile(path: path, reason: "scaling factor \(scalingFactor) / shift \(shiftFactor) are not usable")
        }
        for c in blockChannels where c % groups != 0 {
            throw KilnError.corruptFile(path: path, reason: "block channels \(blockChannels) are not multiples of \(groups) groups")
        }
    }
}
