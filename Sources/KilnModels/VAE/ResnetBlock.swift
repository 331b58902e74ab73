import KilnBackends

/// GroupNorm → SiLU → conv → GroupNorm → SiLU → conv, plus a (1×1-projected where channels change) shortcut.
struct ResnetBlock<B: Backend> {
    let norm1: NormWeights<B>
    let conv1: Conv2d<B>
    let norm2: NormWeights<B>
    let conv2: Conv2d<B>
    let shortcut: Conv2d<B>?
    let groups: Int

    init(_ loader: WeightLoader<B>, in inputs: Int, out outputs: Int, groups: Int) throws {
        self.groups = groups
        norm1 = try loader.norm("norm1", channels: inputs)
        conv1 = try loader.conv("conv1", in: inputs, out: outputs, kernel: 3, padding: .uniform(1))
        norm2 = try loader.norm("norm2", channels: outputs)
        conv2 = try loader.conv("conv2", in: outputs, out: outputs, kernel: 3, padding: .uniform(1))
        shortcut = inputs == outputs ? nil : try loader.conv("conv_shortcut", in: inputs, out: outputs, kernel: 1, padding: .uniform(0))
    }

    func callAsFunction(_ x: B.Tensor, _ backend: B) -> B.Tensor {
        var h = backend.groupNorm(x, groups: groups, weight: norm1.weight, bias: norm1.bias, eps: 1e-6, silu: true)
        h = conv1(h, backend)
        h = backend.groupNorm(h, groups: groups, weight: norm2.weight, bias: norm2.bias, eps: 1e-6, silu: true)
        return conv2(h, backend, residual: shortcut?(x, backend) ?? x)
    }
}

/// Single-head self-attention over all pixels with a residual, as in the VAE's middle block.
/// The projections are linear layers on NHWC pixels (1×1 convolutions as GEMMs).
struct PixelAttention<B: Backend> {
    let norm: NormWeights<B>
    let query: Linear<B>
    let key: Linear<B>
    let value: Linear<B>
    let output: Linear<B>
    let groups: Int

    init(_ loader: WeightLoader<B>, channels: Int, groups: Int) throws {
        self.groups = groups
        norm = try loader.norm("group_norm", channels: channels)
        query = try loader.linear("to_q", in: channels, out: channels)
        key = try loader.linear("to_k", in: channels, out: channels)
        value = try loader.linear("to_v", in: channels, out: channels)
        output = try loader.linear("to_out.0", in: channels, out: channels)
    }

    func callAsFunction(_ x: B.Tensor, _ backend: B) -> B.Tensor {
        let s = backend.shape(x)
        let normed = backend.groupNorm(x, groups: groups, weight: norm.weight, bias: norm.bias, eps: 1e-6, silu: false)
        let tokens = backend.reshape(normed, [s[0], s[1] * s[2], s[3]])
        let attended = backend.attention(q: query(tokens, backend), k: key(tokens, backend), v: value(tokens, backend),
                                         heads: 1, scale: nil, keyMask: nil)
        return backend.add(x, backend.reshape(output(attended, backend), s))
    }
}

/// Resnet, attention, resnet at the lowest resolution.
struct MiddleBlock<B: Backend> {
    let first: ResnetBlock<B>
    let attention: PixelAttention<B>
    let second: ResnetBlock<B>

    init(_ loader: WeightLoader<B>, channels: Int, groups: Int) throws {
        first = try ResnetBlock(loader.scoped("resnets.0"), in: channels, out: channels, groups: groups)
        attention = try PixelAttention(loader.scoped("attentions.0"), channels: channels, groups: groups)
        second = try ResnetBlock(loader.scoped("resnets.1"), in: channels, out: channels, groups: groups)
    }

    func callAsFunction(_ x: B.Tensor, _ backend: B) -> B.Tensor {
        second(attention(first(x, backend), backend), backend)
    }
}
