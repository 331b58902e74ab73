import KilnBackends

/// The VAE decoder: latents `[B, h, w, 16]` (already unscaled and unshifted) → image `[B, 8h, 8w, 3]` in about [-1, 1].
public struct VAEDecoder<B: Backend> {
    let config: AutoencoderConfig
    let convIn: Conv2d<B>
    let middle: MiddleBlock<B>
    let upBlocks: [(resnets: [ResnetBlock<B>], upsample: UpsamplingConv2d<B>?)]
    let normOut: NormWeights<B>
    let convOut: Conv2d<B>

    /// Loads `decoder.*` (diffusers names).
    public init(config: AutoencoderConfig, loader: WeightLoader<B>) throws {
        self.config = config
        let channels = Array(config.blockChannels.reversed())
        let g = config.groups
        convIn = try loader.conv("conv_in", in: config.latentChannels, out: channels[0], kernel: 3, padding: .uniform(1))
        middle = try MiddleBlock(loader.scoped("mid_block"), channels: channels[0], groups: g)
        var blocks: [(resnets: [ResnetBlock<B>], upsample: UpsamplingConv2d<B>?)] = []
        var previous = channels[0]
        for (i, output) in channels.enumerated() {
            let block = loader.scoped("up_blocks.\(i)")
            let resnets = try (0...config.layersPerBlock).map { j in
                try ResnetBlock(block.scoped("resnets.\(j)"), in: j == 0 ? previous : output, out: output, groups: g)
            }
            let upsample = i == channels.count - 1 ? nil : try block.upsamplingConv("upsamplers.0.conv", channels: output)
            blocks.append((resnets, upsample))
            previous = output
        }
        upBlocks = blocks
        normOut = try loader.norm("conv_norm_out", channels: channels.last!)
        convOut = try loader.conv("conv_out", in: channels.last!, out: config.imageChannels, kernel: 3, padding: .uniform(1))
    }

    public func callAsFunction(_ z: B.Tensor, _ backend: B) -> B.Tensor {
        var x = middle(convIn(z, backend), backend)
        for block in upBlocks {
            for resnet in block.resnets { x = resnet(x, backend) }
            if let upsample = block.upsample { x = upsample(x, backend) }
        }
        x = backend.groupNorm(x, groups: config.groups, weight: normOut.weight, bias: normOut.bias, eps: 1e-6, silu: true)
        return convOut(x, backend)
    }
}

/// The VAE encoder: image `[B, H, W, 3]` in [-1, 1] → moments `[B, H/8, W/8, 2·16]` (mean, then log-variance).
public struct VAEEncoder<B: Backend> {
    let config: AutoencoderConfig
    let convIn: Conv2d<B>
    let downBlocks: [(resnets: [ResnetBlock<B>], downsample: Conv2d<B>?)]
    let middle: MiddleBlock<B>
    let normOut: NormWeights<B>
    let convOut: Conv2d<B>

    /// Loads `encoder.*` (diffusers names).
    public init(config: AutoencoderConfig, loader: WeightLoader<B>) throws {
        self.config = config
        let channels = config.blockChannels
        let g = config.groups
        convIn = try loader.conv("conv_in", in: config.imageChannels, out: channels[0], kernel: 3, padding: .uniform(1))
        var blocks: [(resnets: [ResnetBlock<B>], downsample: Conv2d<B>?)] = []
        var previous = channels[0]
        for (i, output) in channels.enumerated() {
            let block = loader.scoped("down_blocks.\(i)")
            let resnets = try (0..<config.layersPerBlock).map { j in
                try ResnetBlock(block.scoped("resnets.\(j)"), in: j == 0 ? previous : output, out: output, groups: g)
            }
            // Stride-2 convolution padded only at the bottom and right, as the original LDM encoder does.
            let downsample = i == channels.count - 1 ? nil
                : try block.conv("downsamplers.0.conv", in: output, out: output, kernel: 3, stride: 2,
                                 padding: Padding(top: 0, left: 0, bottom: 1, right: 1))
            blocks.append((resnets, downsample))
            previous = output
        }
        downBlocks = blocks
        middle = try MiddleBlock(loader.scoped("mid_block"), channels: channels.last!, groups: g)
        normOut = try loader.norm("conv_norm_out", channels: channels.last!)
        convOut = try loader.conv("conv_out", in: channels.last!, out: 2 * config.latentChannels, kernel: 3, padding: .uniform(1))
    }

    public func callAsFunction(_ image: B.Tensor, _ backend: B) -> B.Tensor {
        var x = convIn(image, backend)
        for block in downBlocks {
            for resnet in block.resnets { x = resnet(x, backend) }
            if let downsample = block.downsample { x = downsample(x, backend) }
        }
        x = middle(x, backend)
        x = backend.groupNorm(x, groups: config.groups, weight: normOut.weight, bias: normOut.bias, eps: 1e-6, silu: true)
        return convOut(x, backend)
    }
}
